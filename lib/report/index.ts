export { collectReport, writeReport, type ReportInput, type ReportOptions } from './build.ts';
export { ReportCollector, parseReportEvent, type ReportData, type ReportEvent, type ReportSample } from './collect.ts';
export { escapeHtml, renderReportHtml } from './html.ts';
