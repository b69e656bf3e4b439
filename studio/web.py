"""The studio page: the device room in a browser, served by the device process on 127.0.0.1 only.

Plain HTML and JavaScript (``studio/page.html``), no build step; FastAPI and uvicorn come with Flower. Against a
web page the user visits elsewhere (the attacker here), every request is checked before it reaches the room:

* the server binds 127.0.0.1 alone (``serve``), never another interface;
* a ``Host`` header that is not loopback (``127.0.0.1``, ``localhost``, ``[::1]``) is refused (403): a DNS
  rebinding page reaches 127.0.0.1 under its own name;
* another site may link to the page, and nothing else: any other request a browser marks ``Sec-Fetch-Site``
  cross-site or same-site (the audio, the status, the API) is refused (403), and every response says
  ``Cross-Origin-Resource-Policy: same-origin``, so no other page plays a piece or learns how many there are;
* a POST must carry JSON and come from this page: an ``Origin`` other than ``http://`` + its own Host (another
  site, another port on localhost, https) is refused (403), a form's content type is refused (415), so a
  cross-site form cannot log events or generate, and a body without a Content-Length (411) or over 16 KiB (413);
* no path in a request reaches the file system: audio is served by piece id (six digits, a piece this room made)
  from the room's audio folder, and the page is a string in memory.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from studio.leaving import what_leaves
from studio.room import DeviceRoom, RoomError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
PAGE = (Path(__file__).with_name("page.html")).read_text(encoding="utf-8")
_HOST = re.compile(r"^(\[::1\]|[^:]+)(?::(\d+))?$")
MAX_BODY = 16_384


def _host_of(value: str) -> str | None:
    match = _HOST.match(value.strip().lower())
    return match.group(1) if match else None


def refusal(request: Request) -> Response | None:
    """Why ``request`` must not reach the room (module docstring), as the response to send; None to let it in."""
    host_header = request.headers.get("host", "")
    if _host_of(host_header) not in LOOPBACK_HOSTS:
        return JSONResponse({"error": "this studio answers only on 127.0.0.1 (Host header refused)"}, status_code=403)
    # Another site may link to the page, but never read or trigger anything else: the audio, the status, the API.
    if request.url.path != "/" and request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return JSONResponse({"error": "cross-site requests are refused"}, status_code=403)
    if request.method != "GET":
        origin = request.headers.get("origin")
        if origin is not None and origin.lower() != f"http://{host_header.strip().lower()}":
            return JSONResponse({"error": "cross-origin requests are refused"}, status_code=403)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send JSON (content-type application/json)"}, status_code=415)
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            return JSONResponse({"error": "send the body with a Content-Length"}, status_code=411)
        if int(length) > MAX_BODY:
            return JSONResponse({"error": f"a request body is at most {MAX_BODY} bytes"}, status_code=413)
    return None


def _recent_log(room: DeviceRoom, limit: int = 30) -> list[dict]:
    return [e.to_json_dict() for e in room.events[-limit:]][::-1]


def create_app(room: DeviceRoom) -> FastAPI:
    """The studio's FastAPI app over ``room`` (one user's). Every handler is ``async``, so all of them run on the
    event loop's thread, the one the room's SQLite connection belongs to (create the room on that thread)."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        response = refusal(request) or await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cross-Origin-Resource-Policy"] = "same-origin"  # no other site embeds the audio
        return response

    @app.exception_handler(RoomError)
    async def bad_input(request: Request, error: RoomError) -> JSONResponse:
        return JSONResponse({"error": str(error)}, status_code=400)

    async def body(request: Request) -> dict:
        try:
            value = await request.json()
        except ValueError:
            raise RoomError("the body must be a JSON object.") from None
        if not isinstance(value, dict):
            raise RoomError("the body must be a JSON object.")
        return value

    def text(values: dict, key: str) -> str:
        value = values.get(key)
        if not isinstance(value, str):
            raise RoomError(f"{key} must be text; found {type(value).__name__}.")
        return value

    @app.get("/")
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline' "
                                           "'self'; style-src 'unsafe-inline'; media-src 'self'; frame-ancestors 'none'",
                                           "X-Frame-Options": "DENY"})

    @app.get("/api/status")
    async def status() -> dict:
        return {**room.status(), "leaves": what_leaves(room.preference.refresh()), "log_tail": _recent_log(room)}

    @app.post("/api/request")
    async def request_(request: Request) -> dict:
        proposal = room.request(text(await body(request), "prompt"))
        return {"call": proposal.call, "why": proposal.why()}

    @app.post("/api/generate")
    async def generate(request: Request) -> dict:
        piece = room.generate(text(await body(request), "prompt"))
        return {"piece": piece.id, "source": piece.source, "seconds": piece.seconds, "call": piece.proposal.call,
                "why": piece.proposal.why()}

    @app.post("/api/react")
    async def react(request: Request) -> dict:
        values = await body(request)
        bpm = values.get("bpm")
        if bpm is not None and (isinstance(bpm, bool) or not isinstance(bpm, (int, float))):
            raise RoomError(f"bpm must be a number; found {type(bpm).__name__}.")
        enabled = values.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise RoomError(f"enabled must be true or false; found {type(enabled).__name__}.")
        events = room.react(text(values, "piece"), text(values, "reaction"), genre=values.get("genre"), bpm=bpm,
                            instrument=values.get("instrument"), enabled=enabled)
        return {"logged": [e.to_json_dict() for e in events]}

    @app.get("/audio/{piece_id}")
    async def audio(piece_id: str) -> FileResponse:
        return FileResponse(room.audio_path(piece_id), media_type="audio/wav")

    return app


def serve(room: DeviceRoom, *, port: int) -> int:
    """Serve the studio on 127.0.0.1:``port`` until Ctrl-C."""
    import uvicorn

    print(f"studio: http://127.0.0.1:{port}/ (this device only; Ctrl-C stops it)", flush=True)
    uvicorn.run(create_app(room), host="127.0.0.1", port=port, log_level="warning")
    return 0
