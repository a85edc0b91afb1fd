/**
 * SSRF guard: decides which addresses the fetcher may connect to.
 *
 * Crawled URLs are attacker-controlled, so every hop (first request and each redirect) is resolved here and the
 * connection is made to the exact address that passed the check (see fetch.ts), which rules out DNS rebinding between
 * check and connect. Default policy is closed: only global unicast addresses, unless the operator opens specific ones
 * with `allowAddresses`.
 */
import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import { buildConnector } from 'undici';
import { BlockedAddressError, FilterError, ResolveError } from '../errors.ts';

/** A resolver returning every address of a host; injectable so tests never need real DNS. */
export type LookupFn = (host: string) => Promise<{ address: string; family: 4 | 6 }[]>;

/** One `--allow-address` entry, parsed. */
export type AllowRule =
  | { readonly kind: 'cidr'; readonly source: string; readonly range: [ipaddr.IPv4 | ipaddr.IPv6, number] }
  | { readonly kind: 'hostport'; readonly source: string; readonly host: string; readonly port: number };

/**
 * Parses an `--allow-address` value: a CIDR (`127.0.0.0/8`, `fd00::/8`), a bare IP (`10.1.2.3`), or `host:port`
 * (`127.0.0.1:8080`, `localhost:9000`, `[::1]:9000`). Throws FilterError `invalid_allow_address` on anything else.
 */
export function parseAllowAddress(s: string): AllowRule {
  const text = s.trim();
  const bad = (why: string): never => {
    throw new FilterError('invalid_allow_address', `--allow-address ${JSON.stringify(s)}: ${why}`, { value: s });
  };
  if (text === '') bad('empty value');
  if (text.includes('/')) {
    try {
      const range = ipaddr.parseCIDR(text);
      return { kind: 'cidr', source: text, range };
    } catch {
      return bad('not a valid CIDR (expected e.g. 127.0.0.0/8 or fd00::/8)');
    }
  }
  if (isIP(text) !== 0) {
    const addr = ipaddr.parse(text);
    return { kind: 'cidr', source: text, range: [addr, addr.kind() === 'ipv4' ? 32 : 128] };
  }
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  if (!m) return bad('expected a CIDR, an IP, or host:port');
  const port = Number(m[3]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) bad(`port ${m[3]} out of range 1-65535`);
  const rawHost = (m[1] ?? m[2] ?? '').toLowerCase();
  if (m[1] !== undefined && isIP(rawHost) !== 6) bad('bracketed host must be an IPv6 address');
  if (!/^[a-z0-9.\-:]+$/.test(rawHost)) bad(`host ${JSON.stringify(rawHost)} has invalid characters`);
  return { kind: 'hostport', source: text, host: normaliseHost(rawHost), port };
}

/** Lower-cases a host and rewrites IP spellings (`0x7f.1`, `[::1]`) to their canonical form. */
export function normaliseHost(host: string): string {
  const h = host.toLowerCase().replace(/^\[(.*)\]$/, '$1');
  if (ipaddr.isValid(h)) return canonicalIp(ipaddr.parse(h));
  return h.replace(/\.$/, '');
}

function canonicalIp(a: ipaddr.IPv4 | ipaddr.IPv6): string {
  return a.kind() === 'ipv6' && (a as ipaddr.IPv6).isIPv4MappedAddress()
    ? (a as ipaddr.IPv6).toIPv4Address().toString()
    : a.toString();
}

const GLOBAL_UNICAST_V6 = ipaddr.parseCIDR('2000::/3');

/**
 * Why an address must not be contacted, or undefined when it is public. IPv6 forms that embed an IPv4 address
 * (mapped, NAT64, 6to4, SIIT) are judged by the embedded address, so `::ffff:127.0.0.1` and `64:ff9b::a00:1` are
 * refused; everything outside global unicast 2000::/3 (which covers the deprecated IPv4-compatible `::a.b.c.d`)
 * is refused too.
 */
export function blockedRange(address: string): string | undefined {
  let a: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    a = ipaddr.parse(address);
  } catch {
    return 'unparseable';
  }
  if (a.kind() === 'ipv4') {
    const r = a.range();
    return r === 'unicast' ? undefined : r;
  }
  const v6 = a as ipaddr.IPv6;
  const r = v6.range();
  const embedded = embeddedIpv4(v6, r);
  if (embedded) {
    const inner = blockedRange(embedded.toString());
    return inner === undefined ? undefined : `${r} of ${inner}`;
  }
  if (r !== 'unicast' || !v6.match(GLOBAL_UNICAST_V6)) return r === 'unicast' ? 'reserved' : r;
  return undefined;
}

function embeddedIpv4(a: ipaddr.IPv6, range: string): ipaddr.IPv4 | undefined {
  const p = a.parts;
  switch (range) {
    case 'ipv4Mapped':
    case 'rfc6145':
    case 'rfc6052': // NAT64 well-known and local-use prefixes keep the IPv4 address in the low 32 bits
      return new ipaddr.IPv4([p[6]! >> 8, p[6]! & 0xff, p[7]! >> 8, p[7]! & 0xff]);
    case '6to4': // 2002:AABB:CCDD::/48 carries AA.BB.CC.DD
      return new ipaddr.IPv4([p[1]! >> 8, p[1]! & 0xff, p[2]! >> 8, p[2]! & 0xff]);
    default:
      return undefined;
  }
}

function ruleAllows(rule: AllowRule, host: string, address: string, port: number): boolean {
  if (rule.kind === 'hostport') return rule.port === port && (rule.host === host || rule.host === address);
  let a: ipaddr.IPv4 | ipaddr.IPv6 = ipaddr.parse(address);
  const [net] = rule.range;
  if (a.kind() !== net.kind()) {
    if (a.kind() === 'ipv6' && (a as ipaddr.IPv6).isIPv4MappedAddress()) a = (a as ipaddr.IPv6).toIPv4Address();
    else if (a.kind() === 'ipv4') a = (a as ipaddr.IPv4).toIPv4MappedAddress();
    if (a.kind() !== net.kind()) return false;
  }
  return a.match(rule.range as [typeof a, number]);
}

export interface AddressGuardOptions {
  readonly allow?: readonly AllowRule[];
  readonly lookup?: LookupFn;
  /** Bound on one DNS resolution, in ms. */
  readonly timeoutMs?: number;
}

const defaultLookup: LookupFn = async (host) => {
  const all = await dnsLookup(host, { all: true, verbatim: true });
  return all.map((r) => ({ address: r.address, family: r.family === 6 ? 6 : 4 }));
};

/** Resolves hosts and returns the one address the connection must use, or throws BlockedAddressError. */
export class AddressGuard {
  private readonly allow: readonly AllowRule[];
  private readonly lookupFn: LookupFn;
  private readonly timeoutMs: number;

  constructor(options: AddressGuardOptions = {}) {
    this.allow = options.allow ?? [];
    this.lookupFn = options.lookup ?? defaultLookup;
    this.timeoutMs = options.timeoutMs ?? 5000;
  }

  /** Throws BlockedAddressError unless `address` (reached as `host`:`port`) is public or explicitly allowed. */
  check(host: string, address: string, port: number): void {
    const canonical = normaliseHost(address);
    if (this.allow.some((r) => ruleAllows(r, host, canonical, port))) return;
    const range = blockedRange(canonical);
    if (range !== undefined) throw new BlockedAddressError(host, canonical, range);
  }

  /**
   * Resolves `hostname` and checks every address it resolves to: a host that mixes public and private addresses is
   * refused as a whole, since which one a later resolution would pick is up to the attacker's DNS.
   */
  async resolve(hostname: string, port: number): Promise<string> {
    const host = normaliseHost(hostname);
    if (isIP(host) !== 0) {
      this.check(host, host, port);
      return host;
    }
    let addrs: { address: string }[];
    let timer: NodeJS.Timeout | undefined;
    try {
      addrs = await Promise.race([
        this.lookupFn(host),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new ResolveError(host, 'EAI_TIMEOUT', `DNS lookup of ${host} timed out`)),
            this.timeoutMs,
          );
        }),
      ]);
    } catch (err) {
      if (err instanceof ResolveError) throw err;
      const code = (err as NodeJS.ErrnoException).code ?? 'EAI_FAIL';
      throw new ResolveError(host, code, `DNS lookup of ${host} failed: ${(err as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
    if (addrs.length === 0) throw new ResolveError(host, 'ENOTFOUND', `DNS lookup of ${host} returned no address`);
    for (const a of addrs) this.check(host, a.address, port);
    return normaliseHost(addrs[0]!.address);
  }
}

/**
 * An undici connector that dials only what `guard` resolves and allows: the check and the connect see one address,
 * so DNS cannot change between them. The name stays the TLS server name (SNI, certificate) unless it was an IP.
 */
export function guardedConnector(guard: AddressGuard, timeoutMs: number): buildConnector.connector {
  const base = buildConnector({ timeout: timeoutMs });
  return (o, cb) => {
    const port = Number(o.port) || (o.protocol === 'https:' ? 443 : 80);
    guard.resolve(o.hostname, port).then(
      (address) => {
        const name = o.hostname.replace(/^\[(.*)\]$/, '$1');
        const servername = o.servername || (name === address || name.includes(':') ? undefined : name);
        base({ ...o, hostname: address, servername }, cb);
      },
      (err: Error) => cb(err, null),
    );
  };
}
