"""emoprobe: where inside a language model is emotion recognised?

Logic of the Snakemake workflow that tests can import: corpus reading, model
loading, hidden-state extraction, HDF5 I/O, linear probes and reporting.
"""

__version__ = "0.1.0"
