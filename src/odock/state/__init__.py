"""odock.state"""
