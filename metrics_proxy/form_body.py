"""A metered form's body on its way upstream, as the client sends it: never held whole,
counted against --max-body-size as it passes, its few small fields read on the way
(multipart_scan), and the fields the proxy asks the upstream for added at its end."""

from __future__ import annotations

from aiohttp import web

from metrics_proxy.apis.base import NO_INJECTION, FormApi, FormFields, RequestFacts, UsageMode
from metrics_proxy.errors import UnsupportedEncoding
from metrics_proxy.multipart_scan import FormScanner, form_boundary, form_part


class BodyTooLarge(Exception):
    """The client's body grew past --max-body-size on its way upstream."""


class FormBody:
    """Hands the client's body to the upstream request piece by piece (upstream_client's
    ReadBody). What the form asks for (``facts``) is known once it has passed, as is what the
    proxy added to it (``injection``); an upstream reads a form whole before it answers."""

    __slots__ = (
        "_api",
        "_boundary",
        "_content",
        "_max_size",
        "_mode",
        "_scanner",
        "_size",
        "complete",
        "injection",
        "reframed",
        "too_large",
    )

    def __init__(self, request: web.Request, api: FormApi, mode: UsageMode, max_size: int):
        """Refuses, before anything is read, what --max-body-size and vLLM would refuse
        anyway: a compressed body, or one whose Content-Length is over the limit."""
        if request.headers.get("Content-Encoding", "identity").lower() != "identity":
            raise UnsupportedEncoding(request.headers["Content-Encoding"])
        length = request.content_length
        if length is not None and length > max_size:
            raise web.HTTPRequestEntityTooLarge(max_size=max_size, actual_size=length)
        self._content = request.content
        self._api = api
        self._mode = mode
        self._max_size = max_size
        self._size = 0
        self.complete = False  # the client's body has been read to its end
        self._boundary = form_boundary(request.headers.get("Content-Type"))
        self._scanner = (
            None
            if self._boundary is None
            else FormScanner(self._boundary, api.form_fields, self._before_end)
        )
        self.injection = NO_INJECTION
        self.too_large = False
        # Whether fields will be added is known only at the form's end, after the headers
        # went upstream: a body that may grow goes chunked.
        self.reframed = self._scanner is not None and mode is not UsageMode.NONE

    async def readany(self) -> bytes:
        """The next bytes for the upstream; b"" once the body has all gone."""
        scanner = self._scanner
        while not self.complete:
            piece = await self._content.readany()
            if not piece:
                self.complete = True
                return b"" if scanner is None else scanner.close()
            self._size += len(piece)
            if self._size > self._max_size:
                self.too_large = True
                raise BodyTooLarge(f"{self._size} bytes and more")
            out = piece if scanner is None else scanner.feed(piece)
            if out:
                return out
        return b""

    def facts(self) -> RequestFacts:
        """What the form asks for, as far as it has been read."""
        scanner = self._scanner
        if scanner is None:
            return self._api.read_form({}, readable=False)
        return self._api.read_form(scanner.fields, scanner.readable)

    def _before_end(self, fields: FormFields) -> bytes:
        """At the form's end, every field read: the fields to add, if any."""
        assert self._boundary is not None
        facts = self._api.read_form(fields, readable=True)
        added, self.injection = self._api.prepare_form(facts, self._mode)
        return b"".join(form_part(self._boundary, name, value) for name, value in added)
