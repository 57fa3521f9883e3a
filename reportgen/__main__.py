from reportgen.cli import entry

# Guarded: decoding worker processes import the main module again.
if __name__ == "__main__":
    entry()
