"""What every stage needs from its surroundings: atomic files, progress logs, the device, the
process group and the CPU count. Imports nothing else of the pipeline."""
