"""The teacher cache: the contract between the teacher stages and the student (format, fingerprints, head records, reader)."""
