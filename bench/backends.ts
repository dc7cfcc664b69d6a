/**
 * Which backends a bench run measures (`--backends`), decided before anything starts. OVS-DPDK
 * is in the default set when it is installed; when it is not, the run goes on without it and
 * says so in its table (ovsNote). Asked for by name and missing, it is an error: a run that
 * was meant to compare with OVS must not quietly come back without it.
 */
import { OvsMissingError } from './ovs';

export interface BackendChoice {
  vhostfwd: boolean;
  dpdk: boolean;
  ovs: boolean;
  /** why OVS-DPDK is not measured, for the table and the JSON (null: it is) */
  ovsNote: string | null;
}

const NAMES = ['vhostfwd', 'dpdk', 'ovs'] as const;
type Name = (typeof NAMES)[number];

/**
 * `arg`: the --backends list (undefined: the default); `missing`: what of OVS-DPDK is not
 * installed (bench/ovs.ts ovsMissing()); `dpdkFlag`: false with --no-dpdk.
 */
export function parseBackends(arg: string | undefined, missing: readonly string[], dpdkFlag: boolean): BackendChoice {
  const installed = missing.length === 0;
  if (arg === undefined) {
    return {
      vhostfwd: true, dpdk: dpdkFlag, ovs: installed,
      ovsNote: installed ? null : `OVS-DPDK not measured: not installed (missing: ${missing.join(', ')}; scripts/install-peers.sh installs openvswitch-switch-dpdk)`,
    };
  }
  const names = arg.split(',').map((x) => x.trim().toLowerCase()).filter((x) => x !== '');
  const bad = names.filter((n) => !(NAMES as readonly string[]).includes(n));
  if (names.length === 0 || bad.length > 0) throw new Error(`--backends ${arg}: expected a comma-separated list of ${NAMES.join(', ')}${bad.length ? ` (unknown: ${bad.join(', ')})` : ''}`);
  const has = (n: Name): boolean => names.includes(n);
  if (has('ovs') && !installed) throw new OvsMissingError([...missing]);
  return { vhostfwd: has('vhostfwd'), dpdk: has('dpdk') && dpdkFlag, ovs: has('ovs'), ovsNote: has('ovs') ? null : 'OVS-DPDK not measured: not in --backends' };
}
