/**
 * Frames the backend itself sends into the switch (network knowledge the vhost-user device
 * does not need to hold).
 */

/** A RARP request from `mac` (what QEMU's announce sends), so learning switches move the MAC. */
export function rarpFrame(mac: Uint8Array): Uint8Array {
  const f = new Uint8Array(60);
  f.fill(0xff, 0, 6); // broadcast
  f.set(mac, 6);
  f[12] = 0x80; f[13] = 0x35; // ethertype RARP
  f[14] = 0; f[15] = 1; // hw type ethernet
  f[16] = 0x08; f[17] = 0x00; // proto IPv4
  f[18] = 6; f[19] = 4;
  f[20] = 0; f[21] = 3; // reverse request
  f.set(mac, 22);
  f.set(mac, 32);
  return f;
}
