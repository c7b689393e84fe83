#!/usr/bin/env python
"""The PyProcessParallel README example: tokenize some texts and write one token per line.

Three functions make the pipeline: ``work_generator`` yields the texts, ``work_processor``
splits one text into tokens (in forked worker processes, in parallel) and ``result_consumer``
writes the tokens to a file (in this process, in input order). ``process_parallel`` connects
them with bounded queues and returns when every result has been consumed. The README calls it
three ways: with the defaults, with smaller queues, and with two workers.

The file goes to a temporary directory that is removed at the end. For each of the three calls
it prints the call, then the list of lines read back from the file. Run it from the
repository root::

    python examples/pipeline_seed.py
"""

import os
import tempfile

from inparallel import process_parallel

texts = [
    "this is an example text",
    "another text with no meaning",
    "some more text here",
]


def work_generator():
    for text in texts:  # noqa: UP028 - as in the original README
        yield text


def work_processor(line):
    return line.split()


# In the README, `def result_consumer` is indented under `out = open(...)`: an IndentationError.
# It belongs at the top level. `out` is the file opened before each call below.
def result_consumer(tokens):
    for token in tokens:
        out.write("%s\n" % token)  # noqa: UP031 - as in the original README


def read_tokens(path):
    """The lines of the file, as a list: one token each."""
    with open(path, encoding="utf-8") as tokens_file:
        return tokens_file.read().splitlines()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "tokens.txt")

        out = open(path, "w", encoding="utf-8")  # noqa: SIM115 - as in the original README
        process_parallel(work_generator, work_processor, result_consumer)
        # do your clean up here
        out.close()
        print("process_parallel(work_generator, work_processor, result_consumer)")
        print(f"    {read_tokens(path)}")

        # Memory consumption: at most 100 texts waiting for a worker, 100 results for the consumer.
        out = open(path, "w", encoding="utf-8")  # noqa: SIM115 - as above
        process_parallel(
            work_generator,
            work_processor,
            result_consumer,
            maxsize_jobsize=100,
            maxsize_results=100,
        )
        out.close()
        print("process_parallel(..., maxsize_jobsize=100, maxsize_results=100)")
        print(f"    {read_tokens(path)}")

        # Workers: two worker processes instead of one per core.
        out = open(path, "w", encoding="utf-8")  # noqa: SIM115 - as above
        process_parallel(work_generator, work_processor, result_consumer, workers=2)
        out.close()
        print("process_parallel(..., workers=2)")
        print(f"    {read_tokens(path)}")
