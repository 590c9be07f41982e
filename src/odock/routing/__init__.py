"""odock.routing"""
