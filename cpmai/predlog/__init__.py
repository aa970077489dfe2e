"""The prediction log: every served request under `logs/NAME/ENV/`, and the one owner of its
format.

    format      what a line and a file look like: format versions, file names, the `lost` line
    entry       the typed log entry the server builds for each request (a tuple)
    block       the block being filled, and a closed block ready to write
    writer      `PredictionLog`: takes batches and entries, writes blocks and index records
    index       the columnar index written beside each log file (numpy arrays)
    reader      `read_traffic`, `read_resources`: a period of an environment's log as columns
    cache       what the reader parsed of each file, kept so the next read parses only what is new
    accumulate  parsing JSON lines into columns

Serving writes through it; monitor, cost, batch scoring and `cpmai predict` read through it.
Heavy imports (numpy) stay inside the modules that need them: importing this package is cheap.
"""
