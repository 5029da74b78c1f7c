"""How long the scorer's producer gathers decisions: longer behind the gRPC door (its reply never
waits for the topic), short behind the Kafka door (the topic is its reply), as set when set."""

from fraud.config import Settings


def test_each_door_has_its_own_default():
    settings = Settings()
    assert settings.decision_linger_ms(kafka_door=False) == 25.0
    assert settings.decision_linger_ms(kafka_door=True) == 5.0


def test_a_setting_from_the_environment_applies_to_both_doors(monkeypatch):
    monkeypatch.setenv("FRAUD_PUBLISH_LINGER_MS", "0")
    settings = Settings()
    assert settings.decision_linger_ms(kafka_door=False) == settings.decision_linger_ms(kafka_door=True) == 0.0
