"""The Accept header as PS3.18 8.7 and RFC 9110 12.5.1 read it (no database, no server)."""

from core.dicom import negotiation as n

RLE, JP2 = "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"
LE = n.EXPLICIT_VR_LITTLE_ENDIAN


def test_choices_are_ordered_by_q_then_as_listed_and_q_zero_is_dropped():
    header = ('multipart/related; type="image/jp2"; q=0.5, multipart/related; type="application/octet-stream", '
              'multipart/related; type="image/jls"; q=0, multipart/related; type="image/jpeg"; q=0.5, '
              'image/png; q=nonsense')
    assert [c.media for c in n.choices(header, n.OCTET_STREAM)] == [n.OCTET_STREAM, "image/jp2", "image/jpeg"]


def test_quoted_and_unquoted_parameters_read_alike():
    quoted = n.choices('multipart/related; type="application/octet-stream"; transfer-syntax="*"', "x")
    bare = n.choices("multipart/related; type=application/octet-stream; transfer-syntax=*", "x")
    assert quoted == bare == [n.Choice(n.OCTET_STREAM, "*", 1.0)]


def test_an_absent_header_admits_the_default_and_multipart_without_type_means_it():
    assert n.choices("", n.OCTET_STREAM) == [n.Choice(n.OCTET_STREAM, None, 1.0)]
    assert n.choices("multipart/related", "application/dicom")[0].media == "application/dicom"


def test_frame_encoding_keeps_compressed_data_only_where_the_header_admits_it():
    assert n.frame_encoding("multipart/related; type=application/octet-stream; transfer-syntax=*", RLE) == (
        n.OCTET_STREAM, RLE)
    assert n.frame_encoding('multipart/related; type="application/octet-stream"', RLE) == (n.OCTET_STREAM, LE)
    assert n.frame_encoding('multipart/related; type="image/jp2"', JP2) == ("image/jp2", JP2)
    assert n.frame_encoding('multipart/related; type="image/*"', RLE) == ("image/dicom-rle", RLE)
    assert n.frame_encoding("*/*", RLE) == (n.OCTET_STREAM, LE)
    assert n.frame_encoding('multipart/related; type="image/jp2"', RLE) is None
    assert n.frame_encoding('multipart/related; type="image/jpeg"', LE) is None
    assert n.frame_encoding(f'multipart/related; type="application/octet-stream"; transfer-syntax={JP2}',
                            LE) is None
    assert n.frame_encoding("multipart/related; type=application/octet-stream; transfer-syntax=*", LE) == (
        n.OCTET_STREAM, LE)


def test_instances_are_offered_in_their_stored_syntax_only():
    assert n.instance_encoding('multipart/related; type="application/dicom"', RLE) == RLE
    assert n.instance_encoding("multipart/related; type=application/dicom; transfer-syntax=*", RLE) == RLE
    assert n.instance_encoding(f"multipart/related; type=application/dicom; transfer-syntax={LE}", RLE) is None
    assert not n.admits("application/json", "application/dicom")
