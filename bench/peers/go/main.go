// Bench peer: Go net/http/fcgi (standard library) on a unix socket.
// GET / -> "Hello, World!\n", POST /echo -> the body.
// Usage: bench-go UNIX_SOCKET_PATH
package main

import (
	"io"
	"log"
	"net"
	"net/http"
	"net/http/fcgi"
	"os"
	"strconv"
)

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: bench-go SOCKET")
	}
	os.Remove(os.Args[1])
	l, err := net.Listen("unix", os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/echo" {
			// Read the whole body, then answer: nginx stops sending the
			// request body once the response head arrives, so a streaming
			// echo (io.Copy) stalls behind nginx.
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "Hello, World!\n")
	})
	log.Fatal(fcgi.Serve(l, h))
}
