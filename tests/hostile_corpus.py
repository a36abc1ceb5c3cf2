"""The hostile-input corpus of tests/test_serve_hostile.py: attack builders and the files they send."""

import re
import socket
from pathlib import Path

import av
import numpy as np

PORT = 18441
URL = f"http://127.0.0.1:{PORT}"
SECRET = "TOPSECRET"  # in every outside file name: must never appear in a response


def encode(path: Path, width: int, height: int, rate, frames: int = 1, codec: str = "libx264",
           fmt: str = "mp4") -> Path:
    """A small video of ``frames`` flat frames at ``rate`` fps (a Fraction for slow rates)."""
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height = width, height
        s.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), (37 * i) % 255, np.uint8), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def upload(client, data: bytes, prompt: str = "a red ball", filename: str = "clip.mp4"):
    return client.post(f"{URL}/score", files={"file": (filename, data, "video/mp4")}, data={"prompt": prompt})


def corpus(arena) -> list[tuple[str, object]]:
    """(name, send(client) -> response) for 40+ attacks across paths, containers, bombs, prompts and bodies."""
    root, secret = arena["root"], arena["secret"]
    video = Path(arena["videos"][0][0]).read_bytes()
    J = {"content-type": "application/json"}

    def post(content, headers=J):
        return lambda c: c.post(f"{URL}/score", content=content, headers=headers)

    def js(payload):
        return lambda c: c.post(f"{URL}/score", json=payload)

    def up(data, prompt="a red ball", filename="clip.mp4"):
        return lambda c: upload(c, data, prompt, filename)

    mpd = (b'<?xml version="1.0"?><MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static"><Period><AdaptationSet>'
           b'<Representation id="1" bandwidth="1"><BaseURL>file://' + secret.encode() + b"</BaseURL></Representation>"
           b"</AdaptationSet></Period></MPD>")
    png = _png(16, 16)
    cases = [
        # paths
        ("absolute outside", js({"path": secret, "prompt": "a"})),
        ("dot-dot escape", js({"path": f"{root}/../{Path(arena['outside']).name}/{SECRET}.mp4", "prompt": "a"})),
        ("symlink out", js({"path": "link_out.mp4", "prompt": "a"})),
        ("symlink loop", js({"path": "loop_a", "prompt": "a"})),
        ("etc passwd", js({"path": "/etc/passwd", "prompt": "a"})),
        ("proc self", js({"path": "/proc/self/environ", "prompt": "a"})),
        ("concat protocol", js({"path": f"concat:{root}/sub/clip.mp4|{secret}", "prompt": "a"})),
        ("file protocol", js({"path": f"file:{secret}", "prompt": "a"})),
        ("directory", js({"path": root, "prompt": "a"})),
        ("text as mp4", js({"path": "notes.mp4", "prompt": "a"})),
        ("concat script in root", js({"path": "concat.mp4", "prompt": "a"})),
        ("name too long", js({"path": "y" * 4000, "prompt": "a"})),
        ("nul byte", js({"path": "clip\x00.mp4", "prompt": "a"})),
        ("path not a string", js({"path": 12, "prompt": "a"})),
        ("path a list", js({"path": [secret], "prompt": "a"})),
        ("home tilde", js({"path": f"~/{SECRET}.mp4", "prompt": "a"})),
        # containers
        ("ffconcat upload", up(f"ffconcat version 1.0\nfile '{secret}'\n".encode())),
        ("ffconcat relative", up(f"ffconcat version 1.0\nfile '{SECRET}.mp4'\n".encode())),
        ("hls playlist", up(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile://{secret}\n#EXT-X-ENDLIST\n".encode(),
                            filename="x.m3u8")),
        ("dash manifest", up(mpd, filename="x.mpd")),
        ("sdp", up(b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video 5004 RTP/AVP 96\n",
                   filename="x.sdp")),
        ("png image", up(png, filename="frame_%03d.png")),
        ("text upload", up(b"hello\n" * 100)),
        ("empty upload", up(b"")),
        ("truncated mp4", up(video[:700])),
        ("random bytes", up(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())),
        ("mp4 header only", up(video[:32] + b"\x00" * 10_000)),
        # bombs
        ("4096 still at 1/96 fps", up(arena["bombs"]["still_4096"].read_bytes())),
        ("512 still at 1/96 fps", up(arena["bombs"]["still_512"].read_bytes())),
        ("duration claim", up(arena["bombs"]["long_claim"].read_bytes())),
        ("gif 4096", up(arena["bombs"]["gif_4096"].read_bytes(), filename="x.gif")),
        ("thin frame", up(arena["bombs"]["thin"].read_bytes())),
        # prompts
        ("lone surrogate", post(b'{"path": "sub/clip.mp4", "prompt": "\\udfff"}')),
        ("100k prompt", js({"path": "sub/clip.mp4", "prompt": "a" * 100_000})),
        ("300-token prompt", js({"path": "sub/clip.mp4", "prompt": " ".join(f"t{i}" for i in range(300))})),
        ("prompt a number", js({"path": "sub/clip.mp4", "prompt": 7})),
        ("prompt blank", js({"path": "sub/clip.mp4", "prompt": " \n\t"})),
        ("prompt missing (upload)", up(video, prompt="")),
        # bodies
        ("malformed json", post(b"{not json")),
        ("json array", post(b"[1, 2, 3]")),
        ("json nested", post(b"[" * 50_000 + b"]" * 50_000)),
        ("giant integer", post(b'{"path": 1' + b"0" * 10_000 + b"}")),
        ("invalid utf-8", post(b'{"path": "\xff\xfe", "prompt": "a"}')),
        ("content-length lie", raw(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   b"Content-Length: 10737418240\r\n\r\n{}")),
        ("chunked framing garbage", raw(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                        b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n0\r\n\r\n")),
        ("chunked over limit", post(b"x" * (1 << 20) for _ in range(8))),
        ("multipart no boundary", post(b"--x\r\n", {"content-type": "multipart/form-data"})),
        ("multipart two files", lambda c: c.post(f"{URL}/score", files=[("file", ("a.mp4", video)), ("file", ("b.mp4", video))],
                                                 data={"prompt": "a"})),
        ("multipart no file", lambda c: c.post(f"{URL}/score", files={"other": ("a.txt", b"x")}, data={"prompt": "a"})),
        ("multipart huge field", lambda c: c.post(f"{URL}/score", files={"file": ("a.mp4", video)},
                                                  data={"prompt": "a" * 200_000})),
        ("upload over limit", up(b"\x00" * (3 << 20))),
        ("get score", lambda c: c.get(f"{URL}/score")),
        ("unknown route", lambda c: c.post(f"{URL}/admin", json={})),
        ("docs", lambda c: c.get(f"{URL}/docs")),
        ("openapi", lambda c: c.get(f"{URL}/openapi.json")),
    ]
    return cases


class RawResponse:
    """Status line and body of a response read from a raw socket (for requests httpx refuses to send)."""

    def __init__(self, data: bytes):
        head, _, body = data.partition(b"\r\n\r\n")
        self.status_code = int(head.split()[1])
        self.text = body.decode(errors="replace")


def raw(request: bytes):
    """Send ``request`` bytes as they are (``Connection: close`` added) and read the answer until the server
    closes or has sent the Content-Length it announced."""
    request = request.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)

    def send(_client):
        with socket.create_connection(("127.0.0.1", PORT), timeout=30) as s:
            s.sendall(request)
            data = b""
            while chunk := s.recv(65536):
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"content-length: *(\d+)", head, re.I)
                if sep and length and len(body) >= int(length.group(1)):
                    break
        return RawResponse(data)

    return send


def _png(w: int, h: int) -> bytes:
    import io

    buf = io.BytesIO()
    with av.open(buf, "w", format="image2pipe") as c:
        s = c.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = w, h, "rgb24"
        for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((h, w, 3), np.uint8), format="rgb24")):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()
