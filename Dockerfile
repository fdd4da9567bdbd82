# Image for the web and worker services of docker-compose.yml.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY ingestion ./ingestion
COPY routing ./routing
COPY publisher ./publisher
RUN pip install --no-cache-dir .
COPY . .
RUN SECRET_KEY=build-only PROMETHEUS_MULTIPROC_DIR= python manage.py collectstatic --noinput -v 0
EXPOSE 8083
