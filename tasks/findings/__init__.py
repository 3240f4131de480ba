"""A reader's findings: checked against the label schema and the study's geometry, and normalised.

geometry (label specs, a study's pixel grids and patient space), masks (run-length masks and
polygons), validation (the checker: every bad field named, never a partial result), loading (the
specs and geometry from the database and the object store, for the submit). Pure Python and numpy
but for loading.
"""
