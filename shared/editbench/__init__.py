"""The editbench job's records: the benchmark file, the editor families, the judge's prompts,
rubrics and answers, the approximate edit modes."""
