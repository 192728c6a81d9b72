"""The form scanner lets every byte through, whatever the chunks, keeps only a few small
fields, adds fields in front of the closing delimiter only, and gives up rather than guess."""

from __future__ import annotations

import pytest

from metrics_proxy.multipart_scan import FormFields, FormScanner, form_boundary, form_part

BOUNDARY = b"----form7MA4YWxk"
CLOSE = b"--" + BOUNDARY + b"--\r\n"
WANTED = frozenset({"stream", "stream_include_usage"})
# Audio holding every byte, and near-delimiters that are data: a boundary cut short, a
# delimiter followed by neither CRLF nor "--", one followed by a lone CR.
AUDIO = (
    bytes(range(256)) * 4
    + b"\r\n--"
    + BOUNDARY[:-1]
    + b"\r\n--"
    + BOUNDARY
    + b"X\r\n--"
    + BOUNDARY
    + b"\rY\r\n--"
    + BOUNDARY
    + b"-Z"
)
ADDED = form_part(BOUNDARY, "stream_include_usage", "true")


def part(name: str, value: bytes, filename: str | None = None, head: bytes = b"") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    headers = b"Content-Disposition: " + disposition.encode() + b"\r\n" + head
    return b"--" + BOUNDARY + b"\r\n" + headers + b"\r\n" + value + b"\r\n"


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + CLOSE


class Scan:
    """One scan: what came out, what the end callback saw, and the scanner."""

    def __init__(self, body: bytes, step: int, added: bytes = ADDED) -> None:
        self.seen: list[dict[str, bytes | None]] = []

        def before_end(fields: FormFields) -> bytes:
            self.seen.append(dict(fields))
            return added

        self.scanner = FormScanner(BOUNDARY, WANTED, before_end)
        pieces = [self.scanner.feed(body[i : i + step]) for i in range(0, len(body), step)]
        self.out = b"".join(pieces) + self.scanner.close()


def with_added(body: bytes) -> bytes:
    """The body with ADDED in front of its closing delimiter."""
    end = body.rindex(b"\r\n--" + BOUNDARY + b"--")
    return body[:end] + ADDED + body[end:]


@pytest.mark.parametrize("fields_first", [True, False])
def test_every_chunking_gives_the_same_bytes_and_fields(fields_first: bool) -> None:
    fields = [part("model", b"whisper"), part("stream", b"true")]
    audio = part("file", AUDIO, "speech.wav")
    body = form(*fields, audio) if fields_first else form(audio, *fields)
    for step in range(1, len(body) + 1):
        scan = Scan(body, step)
        assert scan.out == with_added(body), step
        assert scan.seen == [{"stream": b"true"}], step
        assert scan.scanner.fields == {"stream": b"true"}
        assert scan.scanner.readable
        assert scan.scanner.ended


def test_the_form_part_added_is_a_field_of_the_form() -> None:
    body = form(part("file", b"RIFF", "a.wav"))
    added = form_part(BOUNDARY, "stream_include_usage", "true")
    assert Scan(body, len(body)).out == (
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; '
        b'filename="a.wav"\r\n\r\nRIFF\r\n--' + BOUNDARY + b"\r\nContent-Disposition: "
        b'form-data; name="stream_include_usage"\r\n\r\ntrue' + b"\r\n" + CLOSE
    )
    assert added.startswith(b"\r\n--" + BOUNDARY + b"\r\n")


def test_the_last_of_repeated_fields_counts_and_others_are_not_kept() -> None:
    body = form(
        part("stream", b"false"),
        part("prompt", b"p" * 10_000),
        part("file", AUDIO, "a.wav"),
        part("stream", b"true"),
    )
    scan = Scan(body, 1000)
    assert scan.seen == [{"stream": b"true"}]


@pytest.mark.parametrize(
    ("stream_part", "value"),
    [
        (part("stream", b"true", filename="x"), None),  # a file is no boolean
        (part("stream", b"1" * 257), None),  # past the bound: not kept
        (part("stream", b"1" * 256), b"1" * 256),
        (part("stream", b""), b""),
        (part("STREAM", b"true"), "absent"),  # names are case-sensitive
        (part("stream", b"true", head=b"Content-Type: text/plain\r\n"), b"true"),
    ],
)
def test_what_is_kept_of_a_field(stream_part: bytes, value: bytes | str | None) -> None:
    body = form(part("file", AUDIO, "a.wav"), stream_part)
    (fields,) = Scan(body, 7).seen
    assert fields.get("stream", "absent") == value


def test_a_disposition_is_read_in_any_spelling_vllm_reads() -> None:
    spellings = [
        b'Content-Disposition: form-data; name="stream"',
        b"content-disposition:form-data;name=stream",
        b'CONTENT-DISPOSITION:   Form-Data ;  NAME = "stream" ; ',
    ]
    for spelling in spellings:
        body = form(b"--" + BOUNDARY + b"\r\n" + spelling + b"\r\n\r\ntrue\r\n")
        assert Scan(body, 5).seen == [{"stream": b"true"}], spelling


@pytest.mark.parametrize(
    "body",
    [
        b"preamble\r\n" + form(part("stream", b"true")),  # python-multipart skips some
        b"--" + BOUNDARY + b" \r\n" + form(part("stream", b"true")),  # transport padding
        form(b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data\r\n\r\nx\r\n"),
        form(b"--" + BOUNDARY + b"\r\n\r\nx\r\n"),  # no headers, no name
        form(part("stream", b"true", head=b"Content-Disposition: form-data; name=x\r\n")),
        form(part("stream", b"true", head=b"Bad Header: x\r\n")),
        form(part("stream", b"true", head=b"X-Lone-CR: a\rb\r\n")),
        form(b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name*="stream"\r\n\r\n1\r\n'),
        form(
            b"--"
            + BOUNDARY
            + b"\r\nContent-Disposition: form-data; name=x; name*=utf-8''stream\r\n\r\n1\r\n"
        ),
        form(b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="a\\"b"\r\n\r\n1\r\n'),
        form(b"--" + BOUNDARY + b"\r\nContent-Disposition: attachment; name=stream\r\n\r\n1\r\n"),
        form(part("stream", b"true", head=b"X-Long: " + b"x" * 17_000 + b"\r\n")),
    ],
)
def test_a_form_it_cannot_read_as_vllm_does_passes_untouched(body: bytes) -> None:
    for step in (1, 13, len(body)):
        scan = Scan(body, step)
        assert scan.out == body
        assert scan.seen == []
        assert not scan.scanner.readable


@pytest.mark.parametrize(("size", "readable"), [(16 * 1024, True), (16 * 1024 + 1, False)])
def test_the_bound_on_a_header_block_does_not_depend_on_the_chunks(
    size: int, readable: bool
) -> None:
    def with_block(pad: int) -> bytes:
        return form(part("stream", b"true", head=b"X-Pad: " + b"x" * pad + b"\r\n"))

    start = len(b"--" + BOUNDARY + b"\r\n")
    shortest = with_block(0)
    body = with_block(size - (shortest.index(b"\r\n\r\n") - start))
    assert body.index(b"\r\n\r\n") - start == size
    for step in (1, 2, 3, 4096, len(body)):
        scan = Scan(body, step)
        assert scan.scanner.readable is readable, step
        assert scan.out == (with_added(body) if readable else body)


def test_a_header_block_that_never_ends_is_not_kept_growing() -> None:
    scanner = FormScanner(BOUNDARY, WANTED, lambda fields: b"")
    head = b"--" + BOUNDARY + b"\r\nX-Pad: "
    assert scanner.feed(head) == head
    for _ in range(20):
        assert scanner.feed(b"x" * 1024) == b"x" * 1024  # forwarded as it comes...
    assert not scanner.readable  # ... and given up on past the bound


def test_a_form_without_its_end_gets_nothing_added_and_loses_nothing() -> None:
    body = b"".join([part("stream", b"true"), part("file", AUDIO, "a.wav")])
    for cut in (len(body), len(body) - 2, len(body) - 5):  # a delimiter's start held, then given
        scan = Scan(body[:cut], 3)
        assert scan.out == body[:cut]
        assert scan.seen == []
        assert not scan.scanner.ended


def test_the_epilogue_passes_and_only_the_first_end_gets_the_fields() -> None:
    body = form(part("stream", b"true")) + b"epilogue\r\n" + CLOSE
    scan = Scan(body, 4)
    assert scan.out == with_added(form(part("stream", b"true"))) + b"epilogue\r\n" + CLOSE
    assert len(scan.seen) == 1


def test_only_what_may_begin_the_closing_delimiter_is_held_back() -> None:
    scanner = FormScanner(BOUNDARY, WANTED, lambda fields: b"")
    head = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\n'
    assert scanner.feed(head) == head
    audio = bytes(range(256)) * 256  # 64 KiB
    assert scanner.feed(audio) is audio  # passed as it came: not copied
    partial = b"\r\n--" + BOUNDARY[:5]
    assert scanner.feed(audio + partial) == audio
    assert scanner.feed(b"no delimiter after all") == partial + b"no delimiter after all"
    whole = b"\r\n--" + BOUNDARY + b"-"  # one byte short of telling the end from data
    assert scanner.feed(whole) == b""
    assert scanner.close() == whole


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=abc", b"abc"),
        ('Multipart/Form-Data; charset=utf-8; boundary="a b:c"', b"a b:c"),
        ("multipart/form-data;boundary=----WebKitFormBoundary7MA4", b"----WebKitFormBoundary7MA4"),
        ("multipart/form-data", None),
        ("multipart/form-data; boundary=", None),
        ("multipart/form-data; boundary=a; boundary=b", None),  # which one is vLLM's?
        ("multipart/form-data; boundary=" + "b" * 71, None),
        ("multipart/form-data; boundary=ab\u00e9", None),
        ("multipart/mixed; boundary=abc", None),
        ("application/json", None),
        (None, None),
    ],
)
def test_form_boundary(content_type: str | None, boundary: bytes | None) -> None:
    assert form_boundary(content_type) == boundary
