# Thin entry points. `make test` and `make book` each set up .venv by themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv test book book-exec pdf notebooks notebook timings bench student clean

help:
	@echo "make test       set up .venv and run every test (unit, papermill, nbval, book build)"
	@echo "make book       set up .venv and build the HTML book from the stored notebook outputs"
	@echo "make book-exec  build the book re-executing every notebook (cached)"
	@echo "make pdf        the whole book as one PDF (headless Chromium): book/_build/pdf/大模型应用开发.pdf"
	@echo "make notebooks  re-run every chapter notebook with the full profile and store its outputs"
	@echo "make notebook NB=chapters/ch01_attention.ipynb   the same for one notebook"
	@echo "make timings    time every notebook (ci and full, empty model cache) into book/workshop_timings.md (about 2 h on 2 cores)"
	@echo "make bench      bigmodel-course bench attention"
	@echo "make student    student notebooks (solutions removed, outputs cleared) into build/student/ (OUT=... to change)"

venv: $(STAMP)

# Re-installs only when pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,book]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

book: $(STAMP)
	$(BIN)/python book/tools/build_book.py

book-exec: $(STAMP)
	$(BIN)/python book/tools/build_book.py --execute

pdf: $(STAMP)
	$(BIN)/python book/tools/make_pdf.py

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
