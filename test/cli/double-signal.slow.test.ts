/** Issue 20's acceptance run: 20 double-signal runs of `mlm-filter filter` on the real scorer, every one exits 130. */
import { test } from 'node:test';
import { doubleSignalRun, scoringInput } from './double-signal.ts';

const input = scoringInput(3000);

for (let i = 0; i < 20; i++) {
  // Gaps from back-to-back to half a second, so the second signal meets the threads at different points of a batch.
  const gapMs = (i * 37) % 500;
  test(`double signal run ${i + 1}/20 (${gapMs} ms apart) exits 130`, async () => {
    await doubleSignalRun(input, gapMs, i % 5 === 4 ? 'SIGTERM' : 'SIGINT');
  });
}
