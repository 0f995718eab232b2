"""An HTTP/1.1 proxy in front of a Route 53 endpoint (moto_server), for
gale's tests: throttles the first change calls and counts them. Stdlib only.

  route53_proxy.py --upstream http://127.0.0.1:PORT [--port 0]
                   [--throttle N] [--throttle-code Throttling] [--pending M]

Every request is forwarded as it came (method, path, headers with the
signature, body) and the answer goes back as it came, except:
  - the first N ChangeResourceRecordSets calls (POST .../rrset) are answered
    HTTP 400 with Route 53's error body for --throttle-code (Throttling or
    PriorRequestNotComplete) and never reach the upstream;
  - with --pending M, forwarded change calls answer Status PENDING (moto
    always says INSYNC) and the first M GetChange calls (GET .../change/ID)
    are answered PENDING here; later ones go to the upstream (INSYNC);
  - GET /__counts answers {"changes_forwarded": n, "changes_throttled": m,
    "get_change": g, "get_change_pending": p, "requests": k} (k counts the
    requests forwarded, of any kind);
  - GET /__changes answers the bodies of the forwarded change calls, in
    order, as a JSON list of strings (the ChangeBatch XML as sent).
Prints "listening PORT" once bound.
"""

import argparse
import datetime
import http.client
import json
import re
import sys
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own on each side;
# bodies are re-sent with a Content-Length. Expect too: the request body is
# read whole (http.server has sent the 100 Continue) before it goes on.
HOP_BY_HOP = {
    "connection",
    "expect",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}

XMLNS = "https://route53.amazonaws.com/doc/2013-04-01/"
ERROR_BODY = (
    '<?xml version="1.0"?>'
    f'<ErrorResponse xmlns="{XMLNS}">'
    "<Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>"
    "<RequestId>{request_id}</RequestId></ErrorResponse>"
)
MESSAGES = {
    "Throttling": "Rate exceeded",
    "PriorRequestNotComplete": "The request was rejected because Route 53 was still processing a prior request.",
    # What Route 53 says to a DELETE of a set changed or removed since it
    # was read.
    "InvalidChangeBatch": "[Tried to delete resource record set [name='mx.example.test.', type='A', set-identifier='gale/a'] but it was not found]",
}
PENDING_BODY = (
    '<?xml version="1.0"?>'
    f'<GetChangeResponse xmlns="{XMLNS}"><ChangeInfo><Id>/change/{{id}}</Id>'
    "<Status>PENDING</Status><SubmittedAt>{at}</SubmittedAt></ChangeInfo></GetChangeResponse>"
)


class State:
    def __init__(self, upstream, throttle, code, pending):
        url = urllib.parse.urlsplit(upstream)
        self.host = url.hostname
        self.port = url.port or 80
        self.throttle = throttle
        self.code = code
        self.pending = pending
        self.lock = threading.Lock()
        self.forwarded = 0
        self.throttled = 0
        self.get_change = 0
        self.get_change_pending = 0
        self.requests = 0
        self.changes = []

    def counts(self):
        with self.lock:
            return {
                "changes_forwarded": self.forwarded,
                "changes_throttled": self.throttled,
                "get_change": self.get_change,
                "get_change_pending": self.get_change_pending,
                "requests": self.requests,
            }


def is_change(method, path):
    path = urllib.parse.urlsplit(path).path.rstrip("/")
    return method == "POST" and path.endswith("/rrset")


def change_id(method, path):
    """The id of a GetChange call (GET /2013-04-01/change/ID), else None."""
    m = re.fullmatch(r"/[\d-]+/change/([^/?]+)", urllib.parse.urlsplit(path).path)
    return m.group(1) if m and method == "GET" else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State  # set on the class by main()

    def log_message(self, format, *args):
        pass  # the tests read stdout for the port only

    def body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def answer(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def relay(self):
        state = self.state
        body = self.body()
        if self.command == "GET" and self.path == "/__counts":
            self.answer(200, "application/json", json.dumps(state.counts()).encode())
            return
        if self.command == "GET" and self.path == "/__changes":
            with state.lock:
                changes = list(state.changes)
            self.answer(200, "application/json", json.dumps(changes).encode())
            return

        change = is_change(self.command, self.path)
        if change:
            with state.lock:
                refuse = state.throttled < state.throttle
                if refuse:
                    state.throttled += 1
                else:
                    state.forwarded += 1
                    state.changes.append(body.decode("utf-8", "replace"))
            if refuse:
                text = ERROR_BODY.format(
                    code=state.code,
                    message=MESSAGES.get(state.code, "Rate exceeded"),
                    request_id=uuid.uuid4(),
                )
                self.answer(400, "text/xml", text.encode())
                return
        polled = change_id(self.command, self.path)
        if polled is not None:
            with state.lock:
                state.get_change += 1
                pending = state.get_change_pending < state.pending
                if pending:
                    state.get_change_pending += 1
            if pending:
                at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
                self.answer(200, "text/xml", PENDING_BODY.format(id=polled, at=at).encode())
                return
        with state.lock:
            state.requests += 1

        # One upstream connection per request: simple, and moto's
        # development server closes connections on its own schedule anyway.
        upstream = http.client.HTTPConnection(state.host, state.port, timeout=30)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    upstream.putheader(k, v)
            if body or self.command in ("POST", "PUT", "PATCH"):
                upstream.putheader("Content-Length", str(len(body)))
            upstream.endheaders(body or None)
            reply = upstream.getresponse()
            data = reply.read()
            if change and state.pending and reply.status == 200:
                data = data.replace(b"<Status>INSYNC</Status>", b"<Status>PENDING</Status>")
            self.send_response_only(reply.status, reply.reason)
            for k, v in reply.getheaders():
                # A HEAD answer's Content-Length is the GET body's: keep it.
                if k.lower() == "content-length" and self.command != "HEAD":
                    continue
                if k.lower() not in HOP_BY_HOP:
                    self.send_header(k, v)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError as e:
            self.answer(502, "text/plain", f"route53_proxy: upstream: {e}\n".encode())
        finally:
            upstream.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = relay


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--throttle", type=int, default=0)
    parser.add_argument(
        "--throttle-code",
        default="Throttling",
        choices=["Throttling", "PriorRequestNotComplete", "InvalidChangeBatch"],
    )
    parser.add_argument("--pending", type=int, default=0)
    args = parser.parse_args()
    Handler.state = State(args.upstream, args.throttle, args.throttle_code, args.pending)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
