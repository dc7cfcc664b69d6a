/**
 * Owner, group and mode of the server sockets vhostfwd creates. QEMU under libvirt runs as
 * its own user (libvirt-qemu), so a root-owned 0600 socket would refuse it; an operator
 * names the user or group that may connect instead. Names are looked up in /etc/passwd and
 * /etc/group (Node has no getpwnam; hosts that take users from LDAP pass numeric ids).
 */
import fs from 'node:fs';
import { native } from '../../native';

export interface SocketOwnership {
  owner: string | number | null;
  group: string | number | null;
  permissions: number | null;
}

export class OwnershipError extends Error {
  constructor(readonly field: 'owner' | 'group', message: string) {
    super(message);
    this.name = 'OwnershipError';
  }
}

function lookup(file: string, name: string): number | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  for (const line of text.split('\n')) {
    const f = line.split(':');
    if (f[0] === name && f.length >= 3 && /^\d+$/.test(f[2])) return Number(f[2]);
  }
  return null;
}

/** uid and gid to give the socket (-1 = unchanged, as fchown/chown take it). */
function resolveOwnership(o: SocketOwnership): { uid: number; gid: number } {
  const uid = o.owner === null ? -1 : typeof o.owner === 'number' ? o.owner : lookup('/etc/passwd', o.owner);
  if (uid === null) throw new OwnershipError('owner', `no user ${String(o.owner)} in /etc/passwd`);
  const gid = o.group === null ? -1 : typeof o.group === 'number' ? o.group : lookup('/etc/group', o.group);
  if (gid === null) throw new OwnershipError('group', `no group ${String(o.group)} in /etc/group`);
  return { uid, gid };
}

/** The mode to apply: the one asked for, 0600 when only owner/group were given, else null (as created). */
function effectiveMode(o: SocketOwnership): number | null {
  if (o.permissions !== null) return o.permissions;
  return o.owner !== null || o.group !== null ? 0o600 : null;
}

/**
 * Listen on `path` so that nobody but its owner can connect before the ownership is set:
 * the socket is created under umask 0177 (mode 0600), then chowned, then given its mode.
 * Without this a frontend of another user could connect in the window between bind(2) and
 * chmod(2).
 */
export function listenOwned(path: string, backlog: number, o: SocketOwnership): number {
  const mode = effectiveMode(o);
  if (mode === null) return native.listen(path, backlog);
  const { uid, gid } = resolveOwnership(o);
  const old = process.umask(0o177);
  let fd: number;
  try {
    fd = native.listen(path, backlog);
  } finally {
    process.umask(old);
  }
  try {
    if (uid !== -1 || gid !== -1) fs.chownSync(path, uid, gid);
    fs.chmodSync(path, mode);
  } catch (e) {
    native.close(fd);
    fs.rmSync(path, { force: true });
    throw e;
  }
  return fd;
}
