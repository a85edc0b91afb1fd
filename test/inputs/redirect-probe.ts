/**
 * Run by test/inputs/remote.test.ts inside a private network namespace (`unshare -n`, loopback only): http inputs
 * whose servers redirect where they must not lead. Prints, as JSON, each path's outcome: `code: message` or what
 * was read.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { HttpInputs } from '../../lib/inputs/remote.ts';
import { FilterError } from '../../lib/types.ts';

async function listen(handle: (req: IncomingMessage, res: ServerResponse) => void) {
  const server = createServer(handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
}

let seenAuthorization = 'none';
const other = await listen((req, res) => {
  seenAuthorization = req.headers.authorization ?? 'none';
  res.writeHead(200);
  res.end('ok');
});
let port = 0;
const to = (location?: string, status = 302) => ({ status, location });
const routes: Record<string, { status: number; location?: string }> = {
  '/to-metadata': to('http://169.254.169.254/latest/meta-data/'),
  '/to-private': to('http://10.0.0.1/x.tar', 301),
  '/to-v6-loopback': to(`http://[::1]:${port}/ok`, 307),
  '/to-mapped-metadata': to('http://[::ffff:169.254.169.254]/', 308),
  '/to-file': to('file:///etc/passwd'),
  '/loop': to('/loop'),
  '/no-location': to(undefined),
  '/bad-location': to('http://[zz/'),
  '/to-other-origin': to(`http://127.0.0.1:${other.port}/echo`),
};
const main = await listen((req, res) => {
  const route = routes[req.url ?? ''];
  res.writeHead(route?.status ?? 404, route?.location ? { location: route.location } : {});
  res.end();
});
port = main.port;
routes['/to-v6-loopback'] = to(`http://[::1]:${port}/ok`, 307);

const allowed = new HttpInputs({ allowAddresses: ['127.0.0.1/32'], connectTimeoutMs: 2000 });
const closed = new HttpInputs({ connectTimeoutMs: 2000 });
const outcome = async (http: HttpInputs, url: string) => {
  try {
    return (await http.head(url)).toString();
  } catch (err) {
    return err instanceof FilterError ? `${err.code}: ${err.message}` : `uncoded: ${(err as Error).message}`;
  }
};
const got: Record<string, string> = {};
for (const path of Object.keys(routes)) got[path] = await outcome(allowed, `http://user:pw0@127.0.0.1:${port}${path}`);
got['/to-other-origin'] += `; authorization there: ${seenAuthorization}`;
got['/to-localhost-unallowed'] = await outcome(closed, `http://localhost:${port}/`);
process.stdout.write(JSON.stringify(got));
await Promise.all([allowed.close(), closed.close()]);
main.server.close();
other.server.close();
