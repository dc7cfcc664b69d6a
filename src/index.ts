/**
 * The package entry, `require('vhostfwd')`: the forwarder and its configuration, for a
 * program that embeds vhostfwd instead of running the CLI (dist/src/cli.js).
 */
export { Forwarder, formatStats } from './main/forwarder';
export type { QueueStats } from './main/forwarder';
export { loadConfig, parseConfig, checkSchema, ConfigError, SCHEMA_FILE, MAX_QUEUE_PAIRS } from './main/config';
export type { Config, InterfaceConfig, Forwarding, WorkerConfig } from './main/config';
