"""MQTT v5 transport: the only package that imports aiomqtt. The rest speaks in schema models."""

from mqtt_bus.bus import BrokerSettings, IncomingMessage, MqttBus, Subscription, WillMessage, publish_once

__all__ = ["BrokerSettings", "IncomingMessage", "MqttBus", "Subscription", "WillMessage", "publish_once"]
