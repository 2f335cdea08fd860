# Thin entry points. `make test` and `make book` each set up their virtual environment by themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The book alone (render stored outputs): Jupyter Book without PyTorch, a separate light environment.
BOOK_VENV  := .venv-book
BOOK_STAMP := $(BOOK_VENV)/.installed

.PHONY: help venv test test-unit lint book book-exec pdf browser-deps notebooks notebook timings bench student clean

help:
	@echo "make test         set up .venv and run every test (lint, unit, slow, notebooks, book build, browser, PDF)"
	@echo "make test-unit    the package's fast unit tests only (pytest -m unit; a few minutes)"
	@echo "make lint         ruff check"
	@echo "make book         set up the light .venv-book and build the HTML book from the stored notebook outputs"
	@echo "make book-exec    build the book re-executing every notebook (cached; full environment)"
	@echo "make pdf          the whole book as one PDF (headless Chromium): book/_build/pdf/大模型应用开发.pdf"
	@echo "make browser-deps install Chromium and a CJK font with apt-get (root, Debian/Ubuntu) for the browser and PDF tests"
	@echo "make notebooks    re-run every chapter notebook with the full profile and store its outputs"
	@echo "make notebook NB=chapters/ch01_attention.ipynb   the same for one notebook"
	@echo "make timings      time every notebook (ci and full, empty model cache) into book/workshop_timings.md (about 4 h on 2 cores)"
	@echo "make bench        bigmodel-course bench attention"
	@echo "make student      student notebooks (solutions removed, outputs cleared) into build/student/ (OUT=... to change)"

define check_python
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version.split()[0]'
endef

venv: $(STAMP)

# Re-installs only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	$(check_python)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,book]'
	touch $(STAMP)

# The `book` extra of pyproject.toml and nothing else (no PyTorch).
$(BOOK_STAMP): pyproject.toml
	$(check_python)
	test -x $(BOOK_VENV)/bin/python || $(PYTHON) -m venv $(BOOK_VENV)
	$(BOOK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BOOK_VENV)/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["book"]))' > $(BOOK_VENV)/requirements.txt
	$(BOOK_VENV)/bin/python -m pip install --quiet -r $(BOOK_VENV)/requirements.txt
	touch $(BOOK_STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m unit

book: $(BOOK_STAMP)
	$(BOOK_VENV)/bin/python book/tools/build_book.py

book-exec: $(STAMP)
	$(BIN)/python book/tools/build_book.py --execute

pdf: $(STAMP)
	$(BIN)/python book/tools/make_pdf.py

# Tests never install system packages; CI (.ci/run) and anyone who wants the browser tests run this first.
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && fc-list :lang=zh 2>/dev/null | grep -q CJK; then \
		echo "Chromium and a CJK font are installed"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk; \
	else \
		echo "install Chromium and a CJK font, e.g. sudo apt-get install chromium fonts-noto-cjk" >&2; exit 1; \
	fi

notebooks: $(STAMP)
	$(BIN)/python book/tools/run_notebooks.py

notebook: $(STAMP)
	$(BIN)/python book/tools/run_notebooks.py $(NB)

timings: $(STAMP)
	$(BIN)/python book/tools/time_notebooks.py

bench: $(STAMP)
	$(BIN)/bigmodel-course bench attention

student: $(STAMP)
	$(BIN)/python book/tools/make_student.py --out "$(or $(OUT),build/student)"

clean:
	rm -rf book/_build .pytest_cache
