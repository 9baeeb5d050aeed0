"""Segment Anyword demo: ``python app.py --preset tiny --port 7860`` (see ``python app.py --help``)."""

from demo.app import main

if __name__ == "__main__":
    main()
