"""The relations job's records: its input files, the relation prompt, the result record."""
