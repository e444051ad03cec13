"""Thin typed wrappers over confluent-kafka: no behaviour of the app, no network in `__init__`."""

from service.kafka.admin import KafkaAdmin
from service.kafka.consumer import KafkaConsumer
from service.kafka.producer import DeliveryReport, KafkaProducer

__all__ = ["DeliveryReport", "KafkaAdmin", "KafkaConsumer", "KafkaProducer"]
