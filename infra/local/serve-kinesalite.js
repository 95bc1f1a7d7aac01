// Runs kinesalite bound to loopback only (its CLI listens on every interface).
// Usage: node serve-kinesalite.js PORT
const kinesalite = require('kinesalite');
const port = Number(process.argv[2] || 4567);
const server = kinesalite({ createStreamMs: 50, deleteStreamMs: 50, updateStreamMs: 50, shardLimit: 1000 });
server.listen(port, '127.0.0.1', () => console.log(`kinesalite listening on 127.0.0.1:${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
