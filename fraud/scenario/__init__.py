"""Teaching scenarios: a simulated world with scheduled drift, run through the system's own
decision, monitoring and retraining code, narrated as it goes and written up as a report."""

from fraud.scenario.report import write_report
from fraud.scenario.runner import ScenarioRun, run_quietly, run_scenario
from fraud.scenario.story import Story, StoryConfig, load_story, story_names

__all__ = [
    "ScenarioRun",
    "Story",
    "StoryConfig",
    "load_story",
    "run_quietly",
    "run_scenario",
    "story_names",
    "write_report",
]
