from django.urls import path

from tasks.consumers import ProjectFeedConsumer

websocket_urlpatterns = [
    path("ws/projects/<int:project_id>/", ProjectFeedConsumer.as_asgi()),
]
