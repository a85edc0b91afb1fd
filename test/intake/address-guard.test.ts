/** Address classification, --allow-address parsing and Retry-After parsing. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ResolveError } from '../../lib/errors.ts';
import { AddressGuard, blockedRange, normaliseHost, parseAllowAddress } from '../../lib/intake/address-guard.ts';
import { parseRetryAfter } from '../../lib/intake/fetch.ts';
import { FilterError } from '../../lib/types.ts';

describe('blockedRange', () => {
  const blocked = [
    '127.0.0.1',
    '127.255.255.254',
    '10.1.2.3',
    '172.16.0.1',
    '192.168.0.1',
    '100.64.0.1',
    '100.127.255.255',
    '169.254.169.254',
    '0.0.0.0',
    '255.255.255.255',
    '224.0.0.251',
    '198.18.0.1',
    '198.19.255.255',
    '192.0.2.1',
    '240.0.0.1',
    '::',
    '::1',
    'fe80::1',
    'fc00::1',
    'fd00:ec2::254',
    'ff02::1',
    '::ffff:127.0.0.1',
    '::ffff:10.0.0.1',
    '::ffff:169.254.169.254',
    '::7f00:1',
    '64:ff9b::7f00:1',
    '64:ff9b::a9fe:a9fe',
    '2002:c0a8:0101::1',
    '2001:db8::1',
    '2001::1',
  ];
  for (const a of blocked) it(`blocks ${a}`, () => assert.notEqual(blockedRange(a), undefined));

  const open = ['8.8.8.8', '93.184.215.14', '1.1.1.1', '2606:4700:4700::1111', '::ffff:8.8.8.8', '64:ff9b::808:808'];
  for (const a of open) it(`allows ${a}`, () => assert.equal(blockedRange(a), undefined));

  it('names the embedded range for translated IPv6', () => {
    assert.equal(blockedRange('64:ff9b::a00:1'), 'rfc6052 of private');
    assert.equal(blockedRange('2002:7f00:1::'), '6to4 of loopback');
  });

  it('normalises odd IPv4 spellings before judging', () => {
    for (const s of ['2130706433', '0x7f000001', '0177.0.0.1', '127.1', '0x7f.1']) {
      assert.equal(normaliseHost(s), '127.0.0.1', s);
    }
    assert.equal(normaliseHost('[::FFFF:127.0.0.1]'), '127.0.0.1');
    assert.equal(normaliseHost('Example.COM.'), 'example.com');
  });
});

describe('parseAllowAddress', () => {
  it('parses CIDRs, bare IPs and host:port', () => {
    assert.equal(parseAllowAddress('127.0.0.0/8').kind, 'cidr');
    assert.equal(parseAllowAddress('fd00::/8').kind, 'cidr');
    assert.deepEqual(parseAllowAddress('10.0.0.5').kind, 'cidr');
    assert.deepEqual(
      { ...parseAllowAddress('localhost:9000'), source: '' },
      { kind: 'hostport', source: '', host: 'localhost', port: 9000 },
    );
    const v6 = parseAllowAddress('[::1]:8080');
    assert.ok(v6.kind === 'hostport' && v6.host === '::1' && v6.port === 8080);
  });

  for (const bad of ['', 'nonsense', '10.0.0.0/33', 'host:0', 'host:70000', '[notip]:80', 'a b:80', '300.1.1.1/8']) {
    it(`refuses ${JSON.stringify(bad)} with a FilterError`, () => {
      assert.throws(
        () => parseAllowAddress(bad),
        (e: unknown) => e instanceof FilterError && e.code === 'invalid_allow_address' && e.context.value === bad,
      );
    });
  }
});

describe('AddressGuard', () => {
  const lookup = async (host: string) =>
    host === 'svc.internal'
      ? [{ address: '10.9.8.7', family: 4 as const }]
      : [{ address: '127.0.0.1', family: 4 as const }];

  it('host:port rules match the name or the address, on that port only', async () => {
    const g = new AddressGuard({ allow: [parseAllowAddress('localhost:9000')], lookup });
    assert.equal(await g.resolve('localhost', 9000), '127.0.0.1');
    await assert.rejects(g.resolve('localhost', 9001), /refusing/);
    await assert.rejects(g.resolve('127.0.0.1', 9000), /refusing/);
  });

  it('CIDR rules match any port and IPv4-mapped forms', async () => {
    const g = new AddressGuard({ allow: [parseAllowAddress('10.0.0.0/8')], lookup });
    assert.equal(await g.resolve('svc.internal', 443), '10.9.8.7');
    assert.equal(await g.resolve('[::ffff:10.1.1.1]', 80), '10.1.1.1');
    await assert.rejects(g.resolve('192.168.1.1', 80), /refusing/);
  });

  it('bounds a hanging DNS lookup', async () => {
    const g = new AddressGuard({ lookup: () => new Promise(() => undefined), timeoutMs: 50 });
    await assert.rejects(
      g.resolve('slow.test', 80),
      (e: unknown) => e instanceof ResolveError && e.code === 'dns_failed' && e.dnsCode === 'EAI_TIMEOUT',
    );
  });
});

describe('parseRetryAfter', () => {
  it('reads delta-seconds and HTTP dates', () => {
    assert.equal(parseRetryAfter('3'), 3000);
    const now = Date.parse('2026-01-01T00:00:00Z');
    assert.equal(parseRetryAfter('Thu, 01 Jan 2026 00:00:10 GMT', now), 10_000);
    assert.equal(parseRetryAfter(undefined), undefined);
    assert.equal(parseRetryAfter('soon'), undefined);
  });
});
