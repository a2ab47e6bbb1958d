// /proc readings for the benchmark: process trees, CPU time, memory.
import { readFileSync, readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

let ticks = 100;
try {
  ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
} catch {}
export const CLK_TCK = ticks;

/** Fields of /proc/<pid>/stat after the command name, or null if the process is gone. */
function statFields(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** Every live descendant of `pid` (not `pid` itself). */
export function descendants(pid) {
  const children = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const f = statFields(name);
    if (!f) continue;
    const ppid = Number(f[1]);
    if (!children.has(ppid)) children.set(ppid, []);
    children.get(ppid).push(Number(name));
  }
  const out = [];
  const queue = [...(children.get(Number(pid)) ?? [])];
  while (queue.length) {
    const p = queue.shift();
    out.push(p);
    queue.push(...(children.get(p) ?? []));
  }
  return out;
}

/** utime + stime of the given processes (all their threads), in ms. */
export function cpuMs(pids) {
  let t = 0;
  for (const pid of pids) {
    const f = statFields(pid);
    if (!f) continue;
    // After "pid (comm) ": state=0 ppid=1 ... utime=11 stime=12 (0-based here).
    t += Number(f[11]) + Number(f[12]);
  }
  return (t * 1000) / CLK_TCK;
}

/** Sum of a /proc/<pid>/status field (VmRSS, VmHWM) over processes, in KiB. */
export function memKiB(pids, field) {
  let kib = 0;
  for (const pid of pids) {
    try {
      const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) kib += Number(m[1]);
    } catch {}
  }
  return kib;
}
