/**
 * What each backend is told to do with the frontend's ports, as plain data, so that it can be
 * tested without starting anything (test/bench-topology.test.ts): vhostfwd's config, OVS's
 * ports and OpenFlow rules, and the frontend's MAC addresses for the bridge rows.
 *
 * Two topologies are measured:
 *   - xconnect (2 ports): vhostfwd `forwarding: xconnect`, DPDK testpmd io forward, OVS with
 *     port-to-port flows (`in_port=1,actions=output:2` and back). No MAC work anywhere.
 *   - bridge (2 or more ports): vhostfwd `forwarding: bridge`, OVS's NORMAL action (learning
 *     switch); no DPDK (testpmd is not a switch). The frontend runs testpmd's mac forward mode
 *     with distinct port MACs, each port addressing its partner (0 <-> 1, 2 <-> 3, ...: testpmd's
 *     paired topology), so after the first frames both switches forward unicast to one port.
 *     io forward would keep the first frames' MACs for ever: a source MAC seen on both ports
 *     (a move per packet) and destinations never learned (flooding).
 */

export type Mode = 'xconnect' | 'bridge';

export interface Topology {
  mode: Mode;
  /** vhost-user ports, all on the frontend (xconnect: always 2) */
  ports: number;
  /**
   * More devargs for the frontend's virtio-user ports in this row (`packed_vq=1`,
   * `mrg_rxbuf=0`, ...), the same for every backend; absent: testpmd's defaults.
   */
  frontend?: string;
}

/**
 * Row label: `xc` for the cross-connect, `br2` / `br8` for a bridge of 2 / 8 ports, with the
 * frontend's devargs after a slash when the row has them (`xc/packed_vq=1`).
 */
export const topologyLabel = (t: Topology): string => (t.mode === 'xconnect' ? 'xc' : `br${t.ports}`) + (t.frontend ? `/${t.frontend}` : '');

/**
 * The measured topologies: for each frontend variant (`--virtio-user`, frontendVariants),
 * xconnect (if asked for) first, then one bridge per port count.
 */
export function topologies(modes: readonly Mode[], bridgePorts: readonly number[], frontends: ReadonlyArray<string | null> = [null]): Topology[] {
  const out: Topology[] = [];
  for (const fe of frontends) {
    const extra = fe === null ? {} : { frontend: fe };
    if (modes.includes('xconnect')) out.push({ mode: 'xconnect', ports: 2, ...extra });
    if (modes.includes('bridge')) for (const p of bridgePorts) out.push({ mode: 'bridge', ports: p, ...extra });
  }
  return out;
}

/**
 * `--virtio-user`: frontend variants separated by `;`, each a devargs string for every
 * virtio-user port of its rows; `default` (or nothing between two `;`) is testpmd's defaults.
 * `default;packed_vq=1;mrg_rxbuf=0` gives split, packed and no-MRG_RXBUF rows in one run,
 * each row with every backend alternating in its rounds. null (no option): the defaults only.
 */
export function frontendVariants(arg: string | null): Array<string | null> {
  if (arg === null) return [null];
  const out: Array<string | null> = [];
  for (const raw of arg.split(';')) {
    const v = raw.trim();
    const fe = v === '' || v === 'default' ? null : v;
    if (fe !== null && /\s/.test(fe)) throw new Error(`--virtio-user: "${fe}": devargs have no spaces (variants are separated by ';')`);
    if (!out.includes(fe)) out.push(fe);
  }
  return out;
}

/** testpmd pairs ports 0-1, 2-3, ...: an odd count leaves one port without a partner. */
export function checkBridgePorts(ports: readonly number[]): void {
  for (const p of ports) {
    if (!Number.isInteger(p) || p < 2 || p % 2 !== 0) throw new Error(`--bridge-ports: ${p}: need an even number of ports >= 2 (the frontend pairs ports 0-1, 2-3, ...)`);
  }
}

/** Does this virtio-user devargs string ask for packed rings (`packed_vq=1`)? */
export function wantsPacked(devargs: string | null): boolean {
  return devargs !== null && /(^|,)packed_vq=1(,|$)/.test(devargs);
}

/** Locally administered unicast MAC of frontend port i (02:00:00:00:01:ii). */
export function portMac(i: number): string {
  if (!Number.isInteger(i) || i < 0 || i > 255) throw new Error(`port ${i}: 0..255`);
  return `02:00:00:00:01:${i.toString(16).padStart(2, '0')}`;
}

/** Frontend settings for a bridge row: each port's own MAC and the MAC it sends to (its partner's). */
export function frontendMacs(ports: number): { macs: string[]; peers: string[] } {
  const macs = Array.from({ length: ports }, (_, i) => portMac(i));
  return { macs, peers: macs.map((_, i) => macs[i ^ 1]) };
}

/**
 * vhostfwd's config: every interface a server on its socket, every queue pair of every
 * interface on one worker pinned to `cpu` (the backend core of every backend); `vlan`: every
 * interface an access port of VLAN 10 (the B side of --ab-vlan, bridge only); `packed`: every
 * interface offers VIRTIO_F_RING_PACKED (`packedRing`, off by default in vhostfwd), for a
 * frontend that asks for packed rings (`--virtio-user packed_vq=1`), so that vhostfwd runs
 * the same ring format as DPDK's vhost PMD and OVS-DPDK, which offer it always.
 */
export function vhostfwdConfig(sockets: readonly string[], queues: number, mode: Mode, cpu: number | readonly number[], vlan = false, packed = false): Record<string, unknown> {
  if (vlan && mode !== 'bridge') throw new Error('VLAN access ports need the bridge (xconnect does not take vlan)');
  if (mode === 'xconnect' && sockets.length !== 2) throw new Error(`xconnect needs 2 sockets, got ${sockets.length}`);
  const names = sockets.map((_, i) => `vm${i + 1}`);
  return {
    // steering by queue pair: testpmd's txonly stream is one flow, which a hash would put on one queue
    // (only with several queues, so that builds from before steering existed run the 1-queue rows in --ab-cli)
    interfaces: sockets.map((s, i) => ({ name: names[i], socket: s, mode: 'server', queues, ...(queues > 1 ? { steering: 'pair' } : {}), ...(vlan ? { vlan: { mode: 'access', tag: 10 } } : {}), ...(packed ? { packedRing: true } : {}) })),
    forwarding: mode === 'xconnect' ? { mode: 'xconnect', pairs: [[names[0], names[1]]] } : { mode: 'bridge' },
    workers: typeof cpu === 'number'
      ? [{ cpus: [cpu], queues: Array.from({ length: queues }, (_, q) => names.map((n) => `${n}:${q}`)).flat() }]
      // scaling: one worker per queue pair, each on its own core (cpu[q], wrapping when fewer)
      : Array.from({ length: queues }, (_, q) => ({ cpus: [cpu[q % cpu.length]], queues: names.map((n) => `${n}:${q}`) })),
  };
}

/**
 * Which core does what in a trial. Every backend gets the same forwarding cores (`backend`:
 * vhostfwd's workers, DPDK testpmd's forwarding lcores, OVS's PMD threads), the frontend its
 * own. testpmd's main lcore never forwards, so it is listed first and apart.
 */
export interface CpuPlan {
  /** frontend testpmd: [main, ...forwarding] */
  frontend: number[];
  /** DPDK backend testpmd: [main, ...forwarding] (forwarding = `backend`) */
  dpdkBackend: number[];
  /** forwarding cores of the backend under test */
  backend: number[];
  /** OVS's non-PMD threads */
  ovsMain: number;
  /** fewer cores than 2 x queues + 1: frontend and backend share cores, a functional run only */
  oversubscribed: boolean;
}

/**
 * The cores of a trial with `queues` queue pairs on a machine of `ncpu` cores.
 * Without scaling (and with one queue pair): core 1 forwards for the backend (all its queues),
 * core 0 for the frontend, each testpmd's main lcore on the other one (the layout of every
 * run before scaling). Scaling: one backend core per queue pair (1..N), as many for the
 * frontend (N+1..2N), both mains and OVS's other threads on core 0. With fewer than 2N + 1
 * cores the lists wrap (each still distinct) and the plan says so.
 */
export function cpuPlan(queues: number, scaling: boolean, ncpu: number): CpuPlan {
  if (!Number.isInteger(queues) || queues < 1) throw new Error(`queues ${queues}: an integer >= 1`);
  if (!Number.isInteger(ncpu) || ncpu < 2) throw new Error(`${ncpu} cores: the bench needs 2 at least (frontend and backend apart)`);
  if (!scaling || queues === 1) return { frontend: [1, 0], dpdkBackend: [0, 1], backend: [1], ovsMain: 0, oversubscribed: false };
  const range = (from: number, n: number): number[] => [...new Set(Array.from({ length: n }, (_, i) => (from + i) % ncpu))];
  if (2 * queues + 1 <= ncpu) {
    const backend = range(1, queues);
    return { frontend: [0, ...range(queues + 1, queues)], dpdkBackend: [0, ...backend], backend, ovsMain: 0, oversubscribed: false };
  }
  // too few cores: the backend's workers / PMDs still one per pair where cores allow, the
  // frontend forwarding on the cores other than its main, DPDK's backend main on core 0
  const backend = range(1, queues);
  const feMain = 1 % ncpu;
  const feFwd = range(0, ncpu).filter((c) => c !== feMain).slice(0, queues);
  const beFwd = backend.filter((c) => c !== 0);
  return { frontend: [feMain, ...feFwd], dpdkBackend: [0, ...(beFwd.length > 0 ? beFwd : [1])], backend, ovsMain: 0, oversubscribed: true };
}

/** OVS interface names of the bench's ports (OpenFlow port numbers 1..n, asked for by ofport_request). */
export const ovsPortName = (i: number): string => `vhu${i}`;

/** How OVS attaches to the frontend's sockets. */
export type OvsPortType = 'dpdkvhostuser' | 'dpdkvhostuserclient';

/**
 * `ovs-vsctl` arguments for the bridge and its ports, one transaction. dpdkvhostuser: OVS is
 * the socket server and creates `<rundir>/<name>` (the frontend connects, as it does to
 * vhostfwd and DPDK); dpdkvhostuserclient: OVS connects to `socketPath(i)`, the frontend
 * must be the server.
 */
export function ovsBridgeArgs(bridge: string, ports: number, type: OvsPortType, socketPath: (i: number) => string): string[] {
  const args = ['add-br', bridge, '--', 'set', 'Bridge', bridge, 'datapath_type=netdev'];
  for (let i = 0; i < ports; i++) {
    const name = ovsPortName(i);
    args.push('--', 'add-port', bridge, name, '--', 'set', 'Interface', name, `type=${type}`, `ofport_request=${i + 1}`);
    if (type === 'dpdkvhostuserclient') args.push(`options:vhost-server-path=${socketPath(i)}`);
  }
  return args;
}

/**
 * OpenFlow rules (ovs-ofctl add-flow) replacing the bridge's default: xconnect forwards
 * port 1 to 2 and back (the paired ports, as vhostfwd's xconnect pair); bridge keeps the
 * one NORMAL rule a new bridge has (MAC learning, flooding of unknown destinations).
 */
export function ovsFlows(t: Topology): string[] {
  if (t.mode === 'bridge') return ['actions=NORMAL'];
  const flows: string[] = [];
  for (let p = 1; p + 1 <= t.ports; p += 2) flows.push(`in_port=${p},actions=output:${p + 1}`, `in_port=${p + 1},actions=output:${p}`);
  return flows;
}

/**
 * Open_vSwitch other_config for a bench run: DPDK on, its PMD thread on the backend core
 * alone (`pmdCpu`), its main/non-PMD threads on `mainCpu`, `socketMemMb` of hugepages, no PCI
 * probing, a --file-prefix of our own (OVS 3.1 adds --in-memory, so no hugepage files are
 * left; the prefix keeps its runtime state apart from every other DPDK process anyway).
 * `tso`: userspace TSO on.
 */
export function ovsOtherConfig(o: { pmdCpus: readonly number[]; mainCpu: number; socketMemMb: number; filePrefix: string; tso?: boolean }): string[] {
  const mask = (cpus: readonly number[]): string => `0x${cpus.reduce((m, c) => m | (1n << BigInt(c)), 0n).toString(16)}`;
  return [
    'other_config:dpdk-init=true',
    `other_config:dpdk-socket-mem=${o.socketMemMb}`,
    `other_config:pmd-cpu-mask=${mask(o.pmdCpus)}`,
    `other_config:dpdk-lcore-mask=${mask([o.mainCpu])}`,
    `other_config:dpdk-extra=--no-pci --file-prefix=${o.filePrefix}`,
    // several PMDs (scaling): queues dealt round robin, one per PMD in turn, as vhostfwd's
    // workers and DPDK's lcores get them, not by measured cycles (which moves them mid-trial)
    ...(o.pmdCpus.length > 1 ? ['other_config:pmd-rxq-assign=roundrobin'] : []),
    // guest TSO and checksum offload (bench/tcp.ts); OVS 3.1 reads it only at start, and
    // gives guests TSO only on dpdkvhostuserclient ports (../shared/PEERS.md)
    ...(o.tso ? ['other_config:userspace-tso-enable=true'] : []),
  ];
}
