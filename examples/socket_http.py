#!/usr/bin/env python3
"""An HTTP server on a listening socket inherited from nodeagent (a watcher with
sockets = [...]): fd 3 under systemd's convention (LISTEN_FDS, and LISTEN_PID equal
to this process's pid), or the fd given as `--fd N` (Circus's `$(sockets.NAME)`).
On SIGTERM it stops accepting, finishes the requests it has, and exits."""

import http.server
import os
import signal
import socket
import sys
import threading


def inherited_fd():
    if len(sys.argv) > 2 and sys.argv[1] == "--fd":
        return int(sys.argv[2])
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS", "0")) > 0:
        return 3
    sys.exit("no inherited socket: run this from a watcher with sockets = [...]")


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from pid %d\n" % os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(sock, handler=Hello):
    """Serves HTTP with `handler` on the listening socket `sock` until SIGTERM, then
    finishes the requests in flight."""
    server = http.server.ThreadingHTTPServer(("", 0), handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = False  # server_close waits for the requests in flight
    # SIGTERM: a thread stops the server. The handler only writes a byte to a pipe:
    # starting a thread there, or taking any lock, can deadlock when the signal lands
    # while the main thread is inside the same code (starting a request's thread).
    r, w = os.pipe()

    def stop_when_told():
        os.read(r, 1)
        server.shutdown()

    threading.Thread(target=stop_when_told, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: os.write(w, b"x"))
    server.serve_forever()
    server.server_close()


def main():
    serve(socket.socket(fileno=inherited_fd()))


if __name__ == "__main__":
    main()
