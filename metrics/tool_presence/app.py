import os

import evaluate
from evaluate.utils import launch_gradio_widget


# Load the script that sits next to this file, locally and in a Space alike
# (a bare evaluate.load("tool_presence") would look for evaluate-metric/tool_presence on the Hub).
module = evaluate.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "tool_presence.py"))
launch_gradio_widget(module)
