'use strict';
// Peer server: Node.js with `ws` and `jsonwebtoken`, the stack of the
// original nano-stream-ws. Same contract as nanostream: stdin lines are
// broadcast to every authenticated client; `?t=` must be an HS256 JWT with
// `exp`, used once; anything else gets HTTP 401 before the upgrade.
//
// Usage: node server.js --port PORT --secret-file PATH [--host 127.0.0.1]

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const { isUtf8 } = require('buffer');
const jwt = require('jsonwebtoken');
const { WebSocketServer } = require('ws');

function parseArgs(argv) {
  const opts = { host: '127.0.0.1' };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '');
    opts[name] = argv[i + 1];
  }
  if (!opts.port || !opts['secret-file']) {
    console.error('usage: server.js --port PORT --secret-file PATH [--host HOST]');
    process.exit(2);
  }
  return opts;
}

function readSecret(path) {
  let data = fs.readFileSync(path);
  if (data[data.length - 1] === 0x0a) data = data.subarray(0, -1);
  if (data[data.length - 1] === 0x0d) data = data.subarray(0, -1);
  if (data.length === 0) throw new Error(`empty secret file: ${path}`);
  // A KeyObject: with a string secret jsonwebtoken re-parses it per verify.
  return crypto.createSecretKey(data);
}

// Tokens are single-use: remember each accepted signature until its exp.
class TokenGate {
  constructor(key) {
    this.key = key;
    this.used = new Map();
  }

  admit(url) {
    const query = url.indexOf('?') >= 0 ? url.slice(url.indexOf('?') + 1) : '';
    const values = new URLSearchParams(query).getAll('t');
    if (values.length !== 1 || !values[0]) return false;
    const token = values[0];
    let claims;
    try {
      claims = jwt.verify(token, this.key, { algorithms: ['HS256'] });
    } catch (err) {
      return false;
    }
    if (typeof claims.exp !== 'number') return false;
    const signature = token.slice(token.lastIndexOf('.') + 1);
    if (this.used.has(signature)) return false;
    this.used.set(signature, claims.exp);
    return true;
  }

  prune() {
    const now = Date.now() / 1000;
    for (const [signature, exp] of this.used) {
      if (exp <= now) this.used.delete(signature);
    }
  }
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const gate = new TokenGate(readSecret(opts['secret-file']));
  const pruner = setInterval(() => gate.prune(), 1000);

  const server = http.createServer((req, res) => {
    res.writeHead(426, { 'Content-Type': 'text/plain' });
    res.end('upgrade required\n');
  });
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1 << 20 });

  server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {});
    if (!gate.admit(req.url)) {
      socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\n' +
                 'Content-Type: text/plain\r\nContent-Length: 13\r\n\r\nunauthorized\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on('error', () => {});
    });
  });

  function broadcast(line) {
    const options = { binary: !isUtf8(line) };
    for (const ws of wss.clients) {
      if (ws.readyState === 1) ws.send(line, options);
    }
  }

  let rest = null;
  function emit(line) {
    if (line.length && line[line.length - 1] === 0x0d) line = line.subarray(0, -1);
    if (line.length) broadcast(line);
  }

  process.stdin.on('data', (chunk) => {
    let data = rest ? Buffer.concat([rest, chunk]) : chunk;
    let start = 0;
    let nl;
    while ((nl = data.indexOf(0x0a, start)) >= 0) {
      emit(data.subarray(start, nl));
      start = nl + 1;
    }
    rest = start < data.length ? data.subarray(start) : null;
  });

  process.stdin.on('end', () => {
    if (rest) emit(rest);
    rest = null;
    clearInterval(pruner);
    server.close();
    // Exit once every client has finished its closing handshake, or after 2 s.
    const exitWhenEmpty = () => { if (wss.clients.size === 0) process.exit(0); };
    for (const ws of wss.clients) {
      ws.on('close', exitWhenEmpty);
      ws.close(1001);
    }
    exitWhenEmpty();
    setTimeout(() => process.exit(0), 2000);
  });

  server.listen(Number(opts.port), opts.host, () => {
    console.error(`listening on ${opts.host}:${opts.port}`);
  });
}

main();
