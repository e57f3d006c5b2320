"""What the kaggle source relies on in kagglehub (pinned 0.4.3) for large downloads, checked against a local
HTTP server that behaves like Kaggle's storage: an interrupted archive resumes with a Range request, and a
file whose bytes do not match the server's MD5 is deleted and reported."""

import base64
import hashlib
import http.server
import threading

import pytest
import requests

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class StorageHandler(http.server.BaseHTTPRequestHandler):
    ranges: list = []

    def do_GET(self):  # noqa: N802 - the http.server API
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].split("=")[1].rstrip("-"))
            StorageHandler.ranges.append(start)
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body) if start else len(PAYLOAD)))
        self.send_header("Accept-Ranges", "bytes")
        md5 = base64.b64encode(hashlib.md5(PAYLOAD).digest()).decode()
        self.send_header("x-goog-hash", f"crc32c=AAAAAA==,md5={md5}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StorageHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    StorageHandler.ranges = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}/archive.zip"
    httpd.shutdown()


def download(url, out_file):
    from kagglehub.clients import download_file
    from kagglehub.handle import parse_dataset_handle

    with requests.get(url, stream=True, timeout=10) as response:
        return download_file(response, str(out_file), parse_dataset_handle("hgunraj/covidxct/versions/5"))


def test_an_interrupted_download_resumes_where_it_stopped(server, tmp_path):
    out = tmp_path / "archive.zip"
    out.write_bytes(PAYLOAD[:300_000])  # what a killed download left
    download(server, out)
    assert StorageHandler.ranges == [300_000], "only the missing bytes were requested"
    assert out.read_bytes() == PAYLOAD


def test_a_download_that_does_not_match_the_servers_md5_is_deleted_and_reported(server, tmp_path):
    from kagglehub.exceptions import DataCorruptionError

    out = tmp_path / "archive.zip"
    out.write_bytes(b"\0" * 300_000)  # a partial file from somewhere else
    with pytest.raises(DataCorruptionError):
        download(server, out)
    assert not out.exists()
