"""odock.providers"""
