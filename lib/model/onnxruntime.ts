/**
 * The project's only import of onnxruntime-node (eslint enforces it): the telemetry policy module is evaluated
 * first, so ORT_DISABLE_TELEMETRY is in the process environment before the native library is loaded.
 */
import './telemetry.ts';

export * from 'onnxruntime-node';
