"""Bench peer: Flask app served by flup's WSGIServer (threaded, FastCGI) on a
unix socket. GET / -> "Hello, World!\n", POST /echo -> the body.
Usage: python app.py UNIX_SOCKET_PATH"""
import os
import sys

from flask import Flask, Response, request
from flup.server.fcgi import WSGIServer

app = Flask(__name__)


@app.get("/")
def index():
    return Response("Hello, World!\n", mimetype="text/plain")


@app.post("/echo")
def echo():
    return Response(request.get_data(), mimetype="application/octet-stream")


if __name__ == "__main__":
    path = sys.argv[1]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    WSGIServer(app, bindAddress=path, umask=0o000).run()
