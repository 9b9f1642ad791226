/**
 * bin/transgate.js under the V8 CPU profiler (what `node --cpu-prof` does;
 * that flag is not allowed in NODE_OPTIONS and the lab starts the gateway
 * itself). The profile is written when the gateway exits, to
 * $TRANSGATE_CPU_PROF (a .cpuprofile file: Chrome DevTools, speedscope).
 * TRANSGATE_MEM_LOG=1 logs process.memoryUsage() every second.
 */
import fs from 'node:fs';
import inspector from 'node:inspector';
import path from 'node:path';
import v8 from 'node:v8';

const out = process.env['TRANSGATE_CPU_PROF'];
if (out) {
  const session = new inspector.Session();
  session.connect();
  // Same-thread inspector sessions answer synchronously, so the profile can be taken in 'exit'.
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 200 });
  session.post('Profiler.start');
  process.on('exit', () => {
    session.post('Profiler.stop', (err, res) => {
      if (!err) fs.writeFileSync(out, JSON.stringify(res.profile));
    });
  });
}
// TRANSGATE_MEM_LOG=1: process.memoryUsage() every second on stderr, to tell V8 heap from native memory.
if (process.env['TRANSGATE_MEM_LOG']) {
  setInterval(() => {
    const m = process.memoryUsage();
    const mib = (n: number) => (n / 1048576).toFixed(1);
    console.error(
      `mem rss=${mib(m.rss)} heapTotal=${mib(m.heapTotal)} heapUsed=${mib(m.heapUsed)} external=${mib(m.external)} arrayBuffers=${mib(m.arrayBuffers)}`,
    );
  }, 1000).unref();
}
// TRANSGATE_HEAP_SNAPSHOT=DIR: SIGUSR2 writes a heap snapshot there.
const snapDir = process.env['TRANSGATE_HEAP_SNAPSHOT'];
if (snapDir)
  process.on('SIGUSR2', () => console.error(`heap snapshot ${v8.writeHeapSnapshot(path.join(snapDir, `gw-${Date.now()}.heapsnapshot`))}`));
// TRANSGATE_V8_FLAGS: V8 flags set at run time, for experiments.
if (process.env['TRANSGATE_V8_FLAGS']) v8.setFlagsFromString(process.env['TRANSGATE_V8_FLAGS']);
// eslint-disable-next-line @typescript-eslint/no-require-imports -- after the flags above: an import would be hoisted above them
require(path.join(__dirname, '..', '..', 'bin', 'transgate.js'));
