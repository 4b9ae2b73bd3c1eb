// An application server that gives every visitor a fresh nanostream token,
// in Node.js with jsonwebtoken (the library nano-stream-ws documents).
//
//   npm install            # in this folder: jsonwebtoken
//   NANOSTREAM_SECRET_FILE=../../secret STREAM=ws://127.0.0.1:8080/ node token_page.js
//
// then open http://127.0.0.1:8000/.  Each page load carries a newly minted
// single-use token between <script> tags; when the connection drops the
// page reloads itself, which mints the next one.

"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const http = require("node:http");
const jwt = require("jsonwebtoken");

// One trailing newline in the file is not part of the key, as for nanostream.
const secret = fs.readFileSync(process.env.NANOSTREAM_SECRET_FILE).toString("utf8").replace(/\r?\n$/, "");
const stream = process.env.STREAM || "ws://127.0.0.1:8080/";
const port = Number(process.env.PORT || 8000);
const TOKEN_TTL = 60; // seconds; at most nanostream's --max-token-ttl

// JSON that cannot close the <script> element it sits in.
function inScript(value) {
  return JSON.stringify(value).replace(/</g, "\\u003c").replace(/>/g, "\\u003e").replace(/&/g, "\\u0026");
}

function page(token) {
  return `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Live feed</title></head>
<body>
<h1>Live feed <small id="state">connecting</small></h1>
<ol id="lines"></ol>
<script>
  const token = ${inScript(token)};
  const socket = new WebSocket(${inScript(stream)} + "?t=" + encodeURIComponent(token));
  const state = document.getElementById("state");
  socket.onopen = () => { state.textContent = "live"; };
  socket.onmessage = (event) => {
    const item = document.createElement("li");
    item.textContent = event.data;
    document.getElementById("lines").append(item);
  };
  socket.onclose = () => {
    state.textContent = "disconnected, reconnecting";
    setTimeout(() => location.reload(), 3000);
  };
</script>
</body>
</html>`;
}

http
  .createServer((request, response) => {
    if (request.method !== "GET" || request.url !== "/") {
      response.writeHead(404).end();
      return;
    }
    // jti keeps two tokens minted in the same second apart.
    const token = jwt.sign({ jti: crypto.randomUUID() }, secret, {
      algorithm: "HS256",
      expiresIn: TOKEN_TTL,
    });
    response.writeHead(200, {
      "Content-Type": "text/html; charset=utf-8",
      "Cache-Control": "no-store", // a cached page would carry a spent token
    });
    response.end(page(token));
  })
  .listen(port, "127.0.0.1", () => {
    console.log(`token page listening on http://127.0.0.1:${port}/`);
  });
