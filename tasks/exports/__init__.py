"""Delivery exports of a batch: JSON findings, DICOM SEG and SR, NIfTI masks, CSV, and a provenance manifest.

tasks.exports.builder builds every file of a batch from its consensus labels and the source
instances' de-identified datasets, stores them encrypted (core.dicom.storage) and records them on
the batch; downloads stream them back.
"""
