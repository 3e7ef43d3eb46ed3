"""Runs the pandas example of docs/CONSUMING.md ("Reading into pandas")
against a database, and prints what it made as JSON for tests/postgres.rs
to check: the DataFrame's columns, index, dtypes and rows.

usage: doc_example.py DOC  (the database URL in $SENSORGATE_DB)
"""

import json
import re
import sys


def example(doc_path):
    text = open(doc_path, encoding="utf-8").read()
    section = text.split("## Reading into pandas", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    if match is None:
        sys.exit(f"no python block under 'Reading into pandas' in {doc_path}")
    return match.group(1)


def main():
    namespace = {}
    exec(compile(example(sys.argv[1]), "CONSUMING.md", "exec"), namespace)
    df = namespace["df"]
    print(
        json.dumps(
            {
                "columns": [str(c) for c in df.columns],
                "index": df.index.name,
                "index_dtype": str(df.index.dtype),
                "dtypes": {str(c): str(t) for c, t in df.dtypes.items()},
                "rows": len(df),
                "first": {
                    "ts": df.index[0].isoformat(),
                    **{str(c): (v.item() if hasattr(v, "item") else v) for c, v in df.iloc[0].items()},
                },
            }
        )
    )


if __name__ == "__main__":
    main()
