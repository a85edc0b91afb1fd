/**
 * The CLIPScore habit: `itm>=0.5` written for a 0..1 score. Every MLM-filter metric is 0..100, so such a threshold
 * passes (or fails) nearly every pair without a word. A value strictly between 0 and 1 is refused with the threshold
 * it probably meant (value x 100) unless the caller opts in; 0 is kept (it means "no bound" on either scale).
 */
import { formatThreshold, type Threshold } from './index.ts';

/** The first threshold that looks like a fraction, with the one it probably meant; undefined when none does. */
export function fractionThreshold(
  thresholds: readonly Threshold[],
): { found: Threshold; meant: Threshold } | undefined {
  const found = thresholds.find((t) => t.value > 0 && t.value < 1);
  // Rounded to 6 decimals: 0.29 x 100 is 28.999999999999996 in floating point.
  return found && { found, meant: { ...found, value: Math.round(found.value * 100 * 1e6) / 1e6 } };
}

/** The explanation and hint for a fraction threshold, e.g. `... did you mean itm>=50?`; `optIn` names the opt-in. */
export function fractionThresholdMessage(t: { found: Threshold; meant: Threshold }, optIn: string): string {
  return (
    `threshold ${formatThreshold(t.found)} looks like a 0..1 fraction, but the scores are 0..100 (it would keep ` +
    `nearly every pair or none): did you mean ${formatThreshold(t.meant)}? (${optIn} to use it as written)`
  );
}
