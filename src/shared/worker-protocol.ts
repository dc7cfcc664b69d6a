/**
 * Messages between the main thread and the poller workers. Main → worker messages are
 * read synchronously by the worker's poll loop (receiveMessageOnPort) after it sees the
 * mailbox counter move, so a busy worker picks them up within one burst; an idle worker
 * is woken through its wake eventfd.
 */
import { LogDesc, RegionDesc, VringDesc } from './types';

/** A port's VLANs (config `vlan`; null: none, the port bridges in the untagged domain as before). */
export type PortVlan = { mode: 'access'; tag: number } | { mode: 'trunk'; allowed: number[]; native: number | null } | null;

export type ForwardingPlan =
  | { mode: 'xconnect'; peer: number[] } // peer[port] = destination port, -1 none
  | { mode: 'bridge'; ports: number; agingMs: number };

export type ToWorker =
  /** poll this guest TX ring (odd index); `parked`: build it now, neither poll nor write it before 'unpark' */
  | { op: 'attach-tx'; ring: VringDesc; regions: RegionDesc[]; log: LogDesc | null; forceLog: boolean; seq: number; parked?: boolean }
  /** this guest RX ring (even index) may be a destination; `parked` as for attach-tx */
  | { op: 'attach-rx'; ring: VringDesc; regions: RegionDesc[]; log: LogDesc | null; forceLog: boolean; seq: number; parked?: boolean }
  /** the parked rings go live (RX entries first), their positions read from their ctrl words; answered with 'ack' */
  | { op: 'unpark'; seq: number }
  /** stop touching a ring; answered with 'ack' carrying the same seq */
  | { op: 'detach'; device: number; index: number; seq: number }
  /** change a running ring's dirty logging in place; answered with 'ack' */
  | { op: 'set-logging'; device: number; index: number; logAll: boolean; logUsedGpa: number; log: LogDesc | null; seq: number }
  /** pause (false) or resume (true) forced logging on the rings attached with forceLog; answered with 'ack' */
  | { op: 'force-log'; on: boolean; seq: number }
  /** send this frame as if the guest on `port` had sent it */
  | { op: 'inject'; port: number; frame: Uint8Array }
  | { op: 'plan'; plan: ForwardingPlan; macTable: SharedArrayBuffer }
  | { op: 'coalesce'; port: number; frames: number; usecs: number }
  /** how packets towards `port` pick its RX queue: flow hash (true) or the source's queue pair */
  | { op: 'steering'; port: number; hash: boolean }
  /** the port's 802.1Q membership (bridge): applied between bursts */
  | { op: 'vlan'; port: number; vlan: PortVlan }
  | { op: 'exit' };

export type FromWorker =
  | { op: 'ready'; worker: number; tid: number; cpus: number[] }
  /**
   * `at`: the worker's wall clock (ms, performance.timeOrigin + now) when it attached or
   * detached the ring: a takeover's blackout runs from the first ring stopped to the last one
   * started by these, not by when the main threads heard of it
   */
  | { op: 'ack'; seq: number; at?: number }
  | { op: 'broken'; device: number; index: number; reason: string }
  /** frames dropped for a bad virtio-net header (one report a second at most; `suppressed` since the last) */
  | { op: 'bad-offload'; device: number; index: number; reason: string; suppressed: number }
  | { op: 'error'; worker: number; error: string };

/** Worker control words (Int32Array over WorkerInit.ctrl). */
export const W_MAILBOX = 0; // incremented by main after each postMessage
export const W_RUN = 1; // 1 while the worker should run
export const W_SLEEPING = 2; // 1 while the worker sleeps on eventfds (main must kick wakeFd)
export const W_SLEEPS = 3; // times the worker went to sleep (left the busy loop)
export const W_EMPTY_WAKES = 4; // sleep timeouts that found no work and waited again
export const W_INTS = 8;

export interface WorkerInit {
  worker: number;
  cpus: number[];
  ctrl: SharedArrayBuffer;
  wakeFd: number;
  /** empty poll rounds between two looks at the clock */
  idleSpins: number;
  /** microseconds without traffic before sleeping on kicks (busy polling before that) */
  idleUs: number;
  /** sleep timeout (ms) while idle: bounds the latency of a missed kick */
  sleepMs: number;
}
