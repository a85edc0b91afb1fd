#!/usr/bin/env node
// Runs the TypeScript sources through tsx's loader, so the CLI works straight from a clone (no build step).
import { register } from 'tsx/esm/api';

// The AWS SDK warns on every run that its 2027 releases need Node 22; the README states the Node requirements once.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
register();
const { main } = await import('../lib/cli/main.ts');
process.exitCode = await main(process.argv.slice(2));
